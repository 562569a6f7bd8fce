"""Table of group reassignments per FLGC layer and epoch of a training run.

python scripts/assignment_changes.py RUN_DIR [--json]
Each cell is 'inputs/filters' that changed group during that epoch (from RUN_DIR/metrics.jsonl).
"""
import json
import os

from flgc.engine.cli import ArgumentParser, human_stream, run
from flgc.engine.runlog import METRICS, read_metrics
from flgc.errors import UsageError


def read_rows(run_dir):
    rows = [r for r in read_metrics(run_dir) if r.get("reassign_per_layer")]
    if not rows:
        raise UsageError(f"{os.path.join(run_dir, METRICS)} records no FLGC layers (is this an FLGC run?)")
    return rows


def main(argv=None):
    parser = ArgumentParser(prog="assignment_changes.py", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--json", action="store_true", help="stdout is only {layer: [[inputs, filters], ...]}; table to stderr")
    args = parser.parse_args(argv)
    rows = read_rows(args.run_dir)
    layers = list(rows[0]["reassign_per_layer"])
    width = max(len(n) for n in layers)
    out = human_stream(args.json)
    print(f"{'layer':<{width}} " + " ".join(f"{'ep' + str(r['epoch']):>9}" for r in rows), file=out)
    for name in layers:
        cells = [r["reassign_per_layer"].get(name, [0, 0]) for r in rows]
        print(f"{name:<{width}} " + " ".join(f"{c[0]:>4}/{c[1]:<4}" for c in cells), file=out)
    print(f"{'total':<{width}} " + " ".join(f"{r['reassign_inputs']:>4}/{r['reassign_filters']:<4}" for r in rows), file=out)
    if args.json:
        print(json.dumps({name: [r["reassign_per_layer"][name] for r in rows] for name in layers}))


if __name__ == "__main__":
    run(main)
