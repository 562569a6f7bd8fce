"""Release a finished training run: checkpoints/NAME.pt (weights + config) and its manifest entry.

python scripts/release_checkpoint.py RUN_DIR --name NAME --config configs/cpu/mbv2_flgc8.yaml
    [KEY=VALUE ...] [--hardware TEXT] [--commit SHA] [--note TEXT] [--force] [--dir checkpoints] [--manifest FILE]
The run must be finished and trained with --config (only where its data and run directory lived and
how fast it ran may differ). The released file is evaluated on the test set with the run's data keys
(override them, e.g. data.root=DIR); the entry records sha256, bytes, accuracy, MMac, params, empty
groups, recipe, epochs, wall time (the log's epoch times), hardware, data and the training commit.
Hardware and commit come from the run's metrics.jsonl (each one, when a resumed run trained on several),
or from --hardware / --commit for epochs whose rows lack them. --note is kept in the entry as it is
(e.g. what else ran on the machine and slowed some epochs, so that `minutes` is read right).
Releasing over an entry whose file has another sha256 is refused unless --force.
"""
import os

from flgc.engine.cli import ArgumentParser, run
from flgc.engine.evaluation import parse_evaluation_overrides
from flgc.errors import UsageError
from flgc.records import releases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = ArgumentParser(prog="release_checkpoint.py", description=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="evaluation data keys, e.g. data.root=DIR")
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", required=True, help="the repository config file the run was trained with")
    parser.add_argument("--hardware", help="what the run trained on, when its log does not say")
    parser.add_argument("--commit", help="the commit that trained the run, when its log does not say")
    parser.add_argument("--note", help="a sentence kept in the entry, e.g. what else ran while the run trained")
    parser.add_argument("--force", action="store_true", help="replace a release of this name with another file")
    parser.add_argument("--dir", default=os.path.join(ROOT, "checkpoints"))
    parser.add_argument("--manifest", default=os.path.join(ROOT, "checkpoints", "manifest.json"))
    args = parser.parse_args(argv)
    overrides = parse_evaluation_overrides(args.overrides, "release_checkpoint.py")
    label = os.path.relpath(os.path.abspath(args.config), ROOT)
    if label.startswith(".."):
        raise UsageError(f"--config {args.config} is not a file of this repository (configs/...)")
    releases.release(args.run_dir, args.name, args.config, args.dir, args.manifest, overrides, args.hardware,
                    args.commit, args.force, config_label=label, note=args.note)


if __name__ == "__main__":
    run(main)
