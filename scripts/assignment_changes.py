"""Group reassignments of FLGC layers: per layer and epoch of a training run, or of a trained
checkpoint against the structure its run started from.

python scripts/assignment_changes.py RUN_DIR [--json]
python scripts/assignment_changes.py --from-start CHECKPOINT|NAME [--json]
RUN_DIR: each cell is 'inputs/filters' that changed group during that epoch (from RUN_DIR/metrics.jsonl).
--from-start: the input channels and filters of every FLGC layer whose group differs from the seeded
initial model of the checkpoint's config (the structure its training started from), with counts,
percentages and the learned group sizes. NAME is a released checkpoint (checkpoints/manifest.json).
"""
import json
import os

import torch

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, human_stream, run
from flgc.engine.runlog import METRICS, read_metrics
from flgc.engine.training import assignments
from flgc.errors import UsageError
from flgc.method.layer import flgc_layers
from flgc.models import build_model
from flgc.records import pretrained


def read_rows(run_dir):
    rows = [r for r in read_metrics(run_dir) if r.get("reassign_per_layer")]
    if not rows:
        raise UsageError(f"{os.path.join(run_dir, METRICS)} records no FLGC layers (is this an FLGC run?)")
    return rows


def moved_from_start(path):
    """{layer: {inputs, filters, moved_inputs, moved_filters, input_sizes, filter_sizes}} of the checkpoint
    at `path` against the seeded initial model of its config."""
    model, cfg, _ = checkpoint.load_model(path)
    torch.manual_seed(cfg.seed)
    start, learned = assignments(build_model(cfg)), assignments(model)
    if not learned:
        raise UsageError(f"{path} has no FLGC layers")
    table = {}
    for name, layer in flgc_layers(model):
        (inputs_0, filters_0), (inputs, filters) = start[name], learned[name]
        table[name] = {"inputs": inputs.numel(), "filters": filters.numel(),
                       "moved_inputs": int((inputs != inputs_0).sum()), "moved_filters": int((filters != filters_0).sum()),
                       "input_sizes": torch.bincount(inputs, minlength=layer.groups).tolist(),
                       "filter_sizes": torch.bincount(filters, minlength=layer.groups).tolist()}
    return table


def print_from_start(table, out):
    width = max(len(name) for name in table)
    print(f"{'layer':<{width}} {'inputs moved':>14} {'filters moved':>14}  group sizes (inputs / filters)", file=out)
    for name, t in table.items():
        print(f"{name:<{width}} {t['moved_inputs']:>7}/{t['inputs']:<6} {t['moved_filters']:>7}/{t['filters']:<6}  "
              f"{t['input_sizes']} / {t['filter_sizes']}", file=out)
    total = {key: sum(t[key] for t in table.values()) for key in ("inputs", "filters", "moved_inputs", "moved_filters")}
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
        table = moved_from_start(pretrained.file_or_release(args.from_start))
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
