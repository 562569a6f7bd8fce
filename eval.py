"""Evaluate a checkpoint on the CIFAR-10 test set: python eval.py --checkpoint PATH [KEY=VALUE ...] [--json]"""
import json

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, human_stream, run
from flgc.engine.evaluation import parse_evaluation_overrides, test_metrics
from flgc.method import flops


def main(argv=None):
    parser = ArgumentParser(prog="eval.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--json", action="store_true", help="stdout is only one JSON object; the summary goes to stderr")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data keys, e.g. data.root=/data")
    args = parser.parse_args(argv)
    overrides = parse_evaluation_overrides(args.overrides, "eval.py")
    model, cfg, _ = checkpoint.load_model(args.checkpoint, overrides)
    mflops, params = flops.count(model)
    test = test_metrics(model, cfg)
    result = {"accuracy": test["accuracy"], "loss": test["loss"], "mflops": mflops, "params": params,
              "images": test["images"]}
    print(f"{args.checkpoint}: top-1 {test['accuracy']:.2f}% on {test['images']} test images, "
          f"loss {test['loss']:.4f}, {mflops:.2f} MMac, {params:,} parameters", file=human_stream(args.json))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run(main)
