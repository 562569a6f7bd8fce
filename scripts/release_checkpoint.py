"""Release a finished training run: checkpoints/NAME-<sha256[:8]>.pt (weights + config) and its manifest entry.

python scripts/release_checkpoint.py RUN_DIR --name NAME --config configs/cpu/mbv2_flgc8.yaml
    [KEY=VALUE ...] [--hardware TEXT] [--commit SHA] [--note TEXT] [--force] [--dir checkpoints] [--manifest FILE]
python scripts/release_checkpoint.py --remeasure NAME [KEY=VALUE ...] [--dir checkpoints] [--manifest FILE]

The run must be finished and trained with --config (only where its data and run directory lived and
how fast it ran may differ), with the schedule that config describes (a run resumed with another
train.epochs is refused where that changed its lr or temperature schedule), and this tree must have no
uncommitted changes. The released file is evaluated with the training preprocessing on the recipe's
test split: `accuracy` (every test image, single crop), `accuracy_first_1000` (images 0-999),
`accuracy_flip` and `accuracy_flip_first_1000` (flip test-time augmentation). KEY=VALUE may say only
where the data are: data.root=DIR, data.download, data.verify_checksums. The entry records sha256,
bytes, the figures, MMac, params, empty groups, for FLGC the input channels and filters in another group
than at the start (moved_from_start), recipe, epochs, wall time (the log's epoch times), hardware, data
and the training commit. Hardware and commit come from the run's metrics.jsonl (each
one, when a resumed run trained on several; a commit trained from uncommitted changes keeps its
'+changes'), or from --hardware / --commit for epochs whose rows lack them. --note is kept in the entry
as it is (e.g. what else ran on the machine and slowed some epochs, so that `minutes` is read right).
Releasing over an entry whose file has another sha256 is refused unless --force; the file the replaced
entry named is removed once the new entry is written.

--remeasure NAME evaluates the file of an existing entry (its sha256 verified first; it must reproduce
the entry's accuracy to 0.01) and fills in the figures and counts the entry lacks; nothing else changes.
"""
import os

from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.records import releases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = ArgumentParser(prog="release_checkpoint.py", description=__doc__)
    parser.add_argument("inputs", nargs="*", metavar="RUN_DIR|KEY=VALUE",
                        help="the run directory and evaluation data keys, e.g. data.root=DIR")
    parser.add_argument("--name", help="the release's name, e.g. mbv2_flgc8_cpu")
    parser.add_argument("--config", help="the repository config file the run was trained with")
    parser.add_argument("--remeasure", metavar="NAME", help="fill the missing figures of the released NAME")
    parser.add_argument("--hardware", help="what the run trained on, when its log does not say")
    parser.add_argument("--commit", help="the commit that trained the run, when its log does not say")
    parser.add_argument("--note", help="a sentence kept in the entry, e.g. what else ran while the run trained")
    parser.add_argument("--force", action="store_true", help="replace a release of this name with another file")
    parser.add_argument("--dir", default=os.path.join(ROOT, "checkpoints"))
    parser.add_argument("--manifest", default=os.path.join(ROOT, "checkpoints", "manifest.json"))
    args = parser.parse_args(argv)
    paths = [a for a in args.inputs if "=" not in a or os.path.exists(a)]
    overrides = releases.parse_release_overrides([a for a in args.inputs if a not in paths])
    if args.remeasure:
        given = [flag for flag, value in (("RUN_DIR", paths), ("--name", args.name), ("--config", args.config),
                                          ("--hardware", args.hardware), ("--commit", args.commit),
                                          ("--note", args.note), ("--force", args.force)) if value]
        if given:
            raise UsageError(f"--remeasure takes a release name and data keys only, not {', '.join(given)}")
        releases.remeasure(args.remeasure, args.dir, args.manifest, overrides)
        return
    if len(paths) != 1 or not args.name or not args.config:
        raise UsageError("give one RUN_DIR, --name NAME and --config FILE (or --remeasure NAME); see --help")
    label = os.path.relpath(os.path.abspath(args.config), ROOT)
    if label.startswith(".."):
        raise UsageError(f"--config {args.config} is not a file of this repository (configs/...)")
    releases.release(paths[0], args.name, args.config, args.dir, args.manifest, overrides, args.hardware,
                     args.commit, args.force, config_label=label, note=args.note)


if __name__ == "__main__":
    run(main)
