"""Group reassignments of FLGC layers: per layer and epoch of a training run, or of a trained
checkpoint against the seeded structure its run started from.

python scripts/assignment_changes.py RUN_DIR [--json]
python scripts/assignment_changes.py --from-start CHECKPOINT|NAME [--json]
RUN_DIR: each cell is 'inputs/filters' that changed group during that epoch (from RUN_DIR/metrics.jsonl).
--from-start: the input channels and filters of every FLGC layer whose group differs from the seeded
initial model of the checkpoint's config (where training started; a budget regularizer's projection
before the first step counts as moved), with counts,
percentages and the learned group sizes. NAME is a released checkpoint (checkpoints/manifest.json).
"""
import json
import os

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, human_stream, run
from flgc.engine.runlog import METRICS, read_metrics
from flgc.engine.training import moved_from_start, moved_totals
from flgc.errors import UsageError
from flgc.records import pretrained


def read_rows(run_dir):
    rows = [r for r in read_metrics(run_dir) if r.get("reassign_per_layer")]
    if not rows:
        raise UsageError(f"{os.path.join(run_dir, METRICS)} records no FLGC layers (is this an FLGC run?)")
    return rows


def print_from_start(table, out):
    width = max(len(name) for name in table)
    print(f"{'layer':<{width}} {'inputs moved':>14} {'filters moved':>14}  group sizes (inputs / filters)", file=out)
    for name, t in table.items():
        print(f"{name:<{width}} {t['moved_inputs']:>7}/{t['inputs']:<6} {t['moved_filters']:>7}/{t['filters']:<6}  "
              f"{t['input_sizes']} / {t['filter_sizes']}", file=out)
    total = moved_totals(table)
    print(f"{'total':<{width}} {total['moved_inputs']:>7}/{total['inputs']:<6} {total['moved_filters']:>7}/"
          f"{total['filters']:<6}  ({100 * total['moved_inputs'] / total['inputs']:.2f}% of the input channels, "
          f"{100 * total['moved_filters'] / total['filters']:.2f}% of the filters in another group than at the start)",
          file=out)
    return total


def main(argv=None):
    parser = ArgumentParser(prog="assignment_changes.py", description=__doc__)
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--from-start", metavar="CHECKPOINT", help="a checkpoint (or released name) against its start")
    parser.add_argument("--json", action="store_true", help="stdout is only the JSON; the table goes to stderr")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.from_start is None):
        raise UsageError("give either RUN_DIR or --from-start CHECKPOINT (one of them)")
    out = human_stream(args.json)
    if args.from_start:
        path = pretrained.file_or_release(args.from_start)
        model, cfg, _ = checkpoint.load_model(path)
        table = moved_from_start(model, cfg)
        if not table:
            raise UsageError(f"{path} has no FLGC layers")
        total = print_from_start(table, out)
        if args.json:
            print(json.dumps({"layers": table, "total": total}))
        return
    rows = read_rows(args.run_dir)
    layers = list(rows[0]["reassign_per_layer"])
    width = max(len(n) for n in layers)
    print(f"{'layer':<{width}} " + " ".join(f"{'ep' + str(r['epoch']):>9}" for r in rows), file=out)
    for name in layers:
        cells = [r["reassign_per_layer"].get(name, [0, 0]) for r in rows]
        print(f"{name:<{width}} " + " ".join(f"{c[0]:>4}/{c[1]:<4}" for c in cells), file=out)
    print(f"{'total':<{width}} " + " ".join(f"{r['reassign_inputs']:>4}/{r['reassign_filters']:<4}" for r in rows), file=out)
    if args.json:
        print(json.dumps({name: [r["reassign_per_layer"][name] for r in rows] for name in layers}))


if __name__ == "__main__":
    run(main)
