"""Export a checkpoint's deployed model to ONNX or TorchScript.

python scripts/export.py --checkpoint CKPT --format onnx|torchscript --out FILE [--batch-size 1]
A training checkpoint is deployed first (BN folded, real groups); the input is N x 3 x 32 x 32 float32
normalised images (dynamic batch for ONNX), the output N x 10 logits.
"""
import os

import torch

from flgc import bench, checkpoint, deploy
from flgc.cli import ArgumentParser, run
from flgc.errors import UsageError


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=1, help="batch size kernels are chosen for")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to overwrite it")
    model, _, payload = checkpoint.load_model(args.checkpoint)
    model = model.eval()
    if payload.get("deploy_spec") is None:
        model = deploy.convert(model, batch_size=args.batch_size)
    model = model.to(memory_format=torch.contiguous_format)
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, ".tmp-" + os.path.basename(args.out))
    try:
        if args.format == "onnx":
            with open(temp, "wb") as f:
                f.write(bench.onnx_bytes(model, args.batch_size))
        else:
            with torch.no_grad():
                traced = torch.jit.trace(model, torch.randn(args.batch_size, 3, 32, 32))
            traced.save(temp)
        os.replace(temp, args.out)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    print(f"exported {args.checkpoint} ({args.format}) -> {args.out}")


if __name__ == "__main__":
    run(main)
