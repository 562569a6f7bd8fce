"""Draw the learned group structure of every FLGC layer of a checkpoint.

python scripts/plot_groups.py CHECKPOINT --out FILE.png
"""
import os

from flgc import checkpoint
from flgc.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.layer import FLGConv2d


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    parser.add_argument("--title", help="figure title (default: the checkpoint path)")
    args = parser.parse_args()
    if os.path.splitext(args.out)[1].lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out {args.out}: allowed file types are .png, .pdf, .svg")
    payload = checkpoint.load(args.checkpoint)
    model = checkpoint.model_from(payload, args.checkpoint)
    if not any(isinstance(m, FLGConv2d) for m in model.modules()):
        raise UsageError(f"checkpoint {args.checkpoint} has no FLGC layers to draw")
    from flgc.plots import group_figure
    figure = group_figure(model, args.title or f"{args.checkpoint} (epoch {payload.get('epoch', '?')})")
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, ".tmp-" + os.path.basename(args.out))
    figure.savefig(temp, dpi=110, format=os.path.splitext(args.out)[1][1:])
    os.replace(temp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
