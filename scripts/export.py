"""Export a checkpoint's deployed model to ONNX or TorchScript.

python scripts/export.py --checkpoint CKPT|NAME --format onnx|torchscript --out FILE [--batch-size 1]
A training checkpoint is deployed first (BN folded, real groups); the input is N x 3 x 32 x 32 float32
normalised images (dynamic batch for ONNX), the output N x 10 logits.
"""

from flgc import deploy
from flgc.deploy import export
from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.fileio import check_output
from flgc.records import pretrained


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or a released checkpoint's name")
    parser.add_argument("--format", required=True, choices=export.FORMATS)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=1, help="batch size kernels are chosen for")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args()
    export.check_format(args.format)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output(args.out, args.force)
    model, _, payload = checkpoint.load_model(pretrained.file_or_release(args.checkpoint))
    model = model.eval()
    if payload.get("deploy_spec") is None:
        model = deploy.deploy_model(model, batch_size=args.batch_size)
    export.export(model, args.format, args.out, args.batch_size)
    print(f"exported {args.checkpoint} ({args.format}) -> {args.out}")


if __name__ == "__main__":
    run(main)
