"""Deploy a checkpoint: its inference form, with BN folded and the learned groups computed as real groups.

python scripts/deploy.py --checkpoint CKPT|NAME --out FILE [--batch-size 1] [--strategy auto|blocks|conv|matmul|native|dense]
NAME is a released checkpoint (checkpoints/manifest.json). The result loads and evaluates with eval.py;
its outputs are checked against the training model's.
"""
import os

import torch

from flgc import deploy
from flgc.deploy import native
from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.fileio import check_output
from flgc.method import flops
from flgc.records import pretrained

TOLERANCE = 1e-4


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or a released checkpoint's name")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=1, help="batch size the per-layer kernels are timed for")
    parser.add_argument("--strategy", default="auto", choices=deploy.STRATEGIES)
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args()
    check_output(args.out, args.force)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.strategy == "native":
        native.require("--strategy native")
    path = pretrained.file_or_release(args.checkpoint)
    model, _, payload = checkpoint.load_model(path)
    if payload.get("deploy_spec") is not None:
        raise UsageError(f"{args.checkpoint} is already deployed")
    model = model.eval()
    deployed = deploy.deploy_model(model, batch_size=args.batch_size, strategy=args.strategy)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = float((deployed(x) - model(x)).abs().max())
    if error > TOLERANCE:
        raise RuntimeError(f"deployed model differs from the training model by {error} (> {TOLERANCE})")
    checkpoint.save(args.out, checkpoint.deployed_payload(
        deployed, payload["config"], epoch=payload.get("epoch"), best_accuracy=payload.get("best_accuracy"),
        source=os.path.basename(path)))
    before, _ = flops.count(model)
    after, params = flops.count(deployed)
    print(f"deployed {args.checkpoint} -> {args.out}: max |logit diff| {error:.2e}, "
          f"{before:.2f} MMac (learned structure) -> {after:.2f} MMac computed, {params:,} parameters")
    if after > before + 0.005:
        print(f"the deployed form computes {after - before:.2f} MMac more than the learned structure: with "
              f"--strategy {args.strategy}, layers run the kernel {'timed fastest' if args.strategy == 'auto' else 'chosen'} "
              f"at batch {args.batch_size}, and a dense or padded kernel also computes the connections the groups "
              f"leave out (auto's picks follow timings and may differ between deployments; pin them with --strategy)")


if __name__ == "__main__":
    run(main)
