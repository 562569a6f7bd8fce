"""Draw the learned group structure of every FLGC layer of a checkpoint.

python scripts/plot_groups.py CHECKPOINT|NAME --out FILE.png
NAME is a released checkpoint (checkpoints/manifest.json).
"""
from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.plots import check_figure_path, group_figure, save_figure
from flgc.errors import UsageError
from flgc.method.layer import flgc_layers
from flgc.records import pretrained


def main(argv=None):
    parser = ArgumentParser(prog="plot_groups.py", description=__doc__)
    parser.add_argument("checkpoint", help="a checkpoint file or a released checkpoint's name")
    parser.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    parser.add_argument("--title", help="figure title (default: the checkpoint path)")
    args = parser.parse_args(argv)
    check_figure_path(args.out, "--out", "plot_groups.py")
    model, _, payload = checkpoint.load_model(pretrained.file_or_release(args.checkpoint))
    if not flgc_layers(model):
        raise UsageError(f"checkpoint {args.checkpoint} has no FLGC layers to draw")
    save_figure(group_figure(model, args.title or f"{args.checkpoint} (epoch {payload.get('epoch', '?')})"), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
