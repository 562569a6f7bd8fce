"""Evaluate a checkpoint on the CIFAR-10 test set.

python eval.py --checkpoint PATH|NAME [--tta flip] [KEY=VALUE ...] [--json]

--checkpoint takes a checkpoint file or the name of a released checkpoint (checkpoints/manifest.json;
its file is sha256-checked first). --tta flip adds the accuracy of flip test-time augmentation (each
image's prediction is the mean softmax of the image and its mirror), reported apart from the plain
single-crop figure, which stays `accuracy`. KEY=VALUE pairs set where the data are and how they are
read (data.root=DIR, data.verify_checksums=false, data.test_subset=N, data.test_jpeg_quality=Q to
measure what a JPEG-re-encoded copy of the test images costs, ...).
"""
import json

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, human_stream, run
from flgc.engine.evaluation import TTA, parse_evaluation_overrides, test_metrics
from flgc.method import flops
from flgc.records import pretrained


def main(argv=None):
    parser = ArgumentParser(prog="eval.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or a released checkpoint's name")
    parser.add_argument("--tta", default="none", choices=TTA, help="also report flip test-time augmentation")
    parser.add_argument("--json", action="store_true", help="stdout is only one JSON object; the summary goes to stderr")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data keys, e.g. data.root=/data")
    args = parser.parse_args(argv)
    overrides = parse_evaluation_overrides(args.overrides, "eval.py")
    model, cfg, _ = checkpoint.load_model(pretrained.file_or_release(args.checkpoint), overrides)
    mflops, params = flops.count(model)
    test = test_metrics(model, cfg)
    result = {"accuracy": test["accuracy"], "loss": test["loss"], "mflops": mflops, "params": params,
              "images": test["images"]}
    jpeg = cfg.data.test_jpeg_quality
    if jpeg is not None:
        result["jpeg_quality"] = jpeg
    out = human_stream(args.json)
    print(f"{args.checkpoint}: top-1 {test['accuracy']:.2f}% on {test['images']} test images"
          f"{'' if jpeg is None else f' JPEG-encoded at quality {jpeg}'}, "
          f"loss {test['loss']:.4f}, {mflops:.2f} MMac, {params:,} parameters", file=out)
    if args.tta == "flip":
        flip = test_metrics(model, cfg, tta="flip")
        result.update(accuracy_flip=flip["accuracy"], loss_flip=flip["loss"])
        print(f"{args.checkpoint}: with flip test-time augmentation: top-1 {flip['accuracy']:.2f}%, "
              f"loss {flip['loss']:.4f}", file=out)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run(main)
