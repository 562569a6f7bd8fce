"""Table of group reassignments per FLGC layer and epoch of a training run.

python scripts/assignment_changes.py RUN_DIR [--filters] [--json]
Each cell is 'inputs/filters' that changed group during that epoch (from RUN_DIR/metrics.jsonl).
"""
import json
import os

from flgc.cli import ArgumentParser, run
from flgc.errors import UsageError


def read_rows(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist; RUN_DIR is a train.py out_dir")
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not JSON lines: {err}") from None
    rows = [r for r in rows if r.get("reassign_per_layer")]
    if not rows:
        raise UsageError(f"{path} records no FLGC layers (is this an FLGC run?)")
    return rows


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--json", action="store_true", help="last line: {layer: [[inputs, filters], ...]}")
    args = parser.parse_args()
    rows = read_rows(args.run_dir)
    layers = list(rows[0]["reassign_per_layer"])
    width = max(len(n) for n in layers)
    print(f"{'layer':<{width}} " + " ".join(f"{'ep' + str(r['epoch']):>9}" for r in rows))
    for name in layers:
        cells = [r["reassign_per_layer"].get(name, [0, 0]) for r in rows]
        print(f"{name:<{width}} " + " ".join(f"{c[0]:>4}/{c[1]:<4}" for c in cells))
    print(f"{'total':<{width}} " + " ".join(f"{r['reassign_inputs']:>4}/{r['reassign_filters']:<4}" for r in rows))
    if args.json:
        print(json.dumps({name: [r["reassign_per_layer"][name] for r in rows] for name in layers}))


if __name__ == "__main__":
    run(main)
