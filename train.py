"""Train a network on CIFAR-10: python train.py --config configs/NAME.yaml [KEY=VALUE ...] [--resume auto|PATH]"""
import sys

from flgc.engine import config
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.runlog import check_plotting


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/mbv2_flgc8.yaml")
    parser.add_argument("--resume", help="'auto' (out_dir/last.pt when present) or a checkpoint path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=2")
    args = parser.parse_args()
    cfg = config.load(args.config, config.parse_overrides(args.overrides))
    check_plotting(cfg.flgc.plot_interval)
    from flgc.engine import distributed
    from flgc.engine.training import Diverged, Interrupted, fit
    code = 0
    try:
        fit(cfg, args.resume)
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        code = 3
    except Interrupted as err:  # saved; 130 for SIGINT, 143 for SIGTERM
        code = err.code
    distributed.exit_process(code)


if __name__ == "__main__":
    run(main)
