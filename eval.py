"""Evaluate a checkpoint on the CIFAR-10 test set: python eval.py --checkpoint PATH [KEY=VALUE ...] [--json]"""
import json

from flgc import checkpoint, config, flops
from flgc.cli import ArgumentParser, run
from flgc.errors import UsageError

OVERRIDABLE = ("data.", "device", "threads", "train.eval_batch_size", "train.channels_last")


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data keys, e.g. data.root=/data")
    args = parser.parse_args()
    overrides = config.parse_overrides(args.overrides)
    for key, _ in overrides:
        if not key.startswith(OVERRIDABLE):
            raise UsageError(f"eval.py cannot override {key!r}; allowed: data.*, device, threads, "
                             f"train.eval_batch_size, train.channels_last")
    payload = checkpoint.load(args.checkpoint)
    cfg = checkpoint.config_of(payload, overrides)
    model = checkpoint.model_from(payload, args.checkpoint, cfg)
    from flgc.engine import evaluate, make_batches, prepare_model, select_device
    device = select_device(cfg)
    mflops, params = flops.count(model)
    test = evaluate(prepare_model(model, cfg, device), make_batches(cfg, device, train=False))
    result = {"accuracy": test["accuracy"], "loss": test["loss"], "mflops": mflops, "params": params,
              "images": test["images"]}
    print(f"{args.checkpoint}: top-1 {test['accuracy']:.2f}% on {test['images']} test images, "
          f"loss {test['loss']:.4f}, {mflops:.2f} MMac, {params:,} parameters")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run(main)
