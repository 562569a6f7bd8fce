"""Draw the learned group structure of every FLGC layer of a checkpoint.

python scripts/plot_groups.py CHECKPOINT --out FILE.png
"""
import os

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.extras import require
from flgc.fileio import atomic_path
from flgc.method.layer import FLGConv2d


def main(argv=None):
    parser = ArgumentParser(prog="plot_groups.py", description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    parser.add_argument("--title", help="figure title (default: the checkpoint path)")
    args = parser.parse_args(argv)
    if os.path.splitext(args.out)[1].lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out {args.out}: allowed file types are .png, .pdf, .svg")
    require("matplotlib", "plot_groups.py")
    model, _, payload = checkpoint.load_model(args.checkpoint)
    if not any(isinstance(m, FLGConv2d) for m in model.modules()):
        raise UsageError(f"checkpoint {args.checkpoint} has no FLGC layers to draw")
    from flgc.engine.plots import group_figure
    figure = group_figure(model, args.title or f"{args.checkpoint} (epoch {payload.get('epoch', '?')})")
    with atomic_path(args.out) as temp:
        figure.savefig(temp, dpi=110, format=os.path.splitext(args.out)[1][1:])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
