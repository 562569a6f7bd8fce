"""Learning-dynamics study: train SGC8 and FLGC8 variants over several seeds and tabulate mean ± sd.

python scripts/learning_study.py --out runs/study [--variants a,b,...] [--seeds 0,1,2] [--table-only] [KEY=VALUE ...]

Every (variant, seed) is a train.py run in OUT/VARIANT/seedN, resumed when it exists, so an interrupted
study continues; runs go seed by seed (every variant's seed 0 first), so a study cut short still has
whole seeds. KEY=VALUE overrides go to every run (e.g. data.root=DIR data.train_subset=5000).
The table (Markdown, on stdout): per variant, mean ± sd over the seeds that finished of the final test
accuracy, the MMac of the learned structure (and its maximum), the empty input + filter groups, and the
group reassignments per epoch (input channels / filters, summed over the FLGC layers).
"""
import os
import statistics
import subprocess
import sys

from flgc.engine import config
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.runlog import METRICS, read_metrics
from flgc.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {  # name: (config, overrides, description)
    "sgc8": ("mbv2_sgc8", [], "standard group conv, G=8"),
    "flgc8-balance": ("mbv2_flgc8", [], "defaults: uniform init, balance"),
    "flgc8-none": ("mbv2_flgc8", ["flgc.regularizer.kind=none"], "uniform init, no regularizer"),
    "flgc8-budget-62.6": ("mbv2_flgc8", ["flgc.regularizer.kind=budget", "flgc.regularizer.target_mflops=62.6"],
                          "uniform init, budget <= 62.6 MMac"),
    "flgc8-balance-random-init": ("mbv2_flgc8", ["flgc.init=random"], "random init (former), balance"),
}


def run_dir(out, name, seed):
    return os.path.join(out, name, f"seed{seed}")


def train(name, seed, out, overrides):
    config, extra, _ = VARIANTS[name]
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
               os.path.join(ROOT, "configs", f"{config}.yaml"), f"out_dir={run_dir(out, name, seed)}",
               f"seed={seed}", "train.progress=false", *extra, *overrides, "--resume", "auto"]
    print("$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UsageError(f"variant {name} seed {seed} failed (see its output above)")


def finished_rows(out, name, seeds):
    """{seed: metrics rows} of the runs of `name` that finished their last epoch."""
    runs = {}
    for seed in seeds:
        directory = run_dir(out, name, seed)
        config_path = os.path.join(directory, "config.yaml")
        if not (os.path.isfile(os.path.join(directory, METRICS)) and os.path.isfile(config_path)):
            continue
        rows = read_metrics(directory)
        if rows and rows[-1]["epoch"] == config.load(config_path).train.epochs:
            runs[seed] = rows
    return runs


def mean_sd(values, digits=2):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table_row(name, runs):
    last = [rows[-1] for rows in runs.values()]
    accuracy = mean_sd([r["test_accuracy"] for r in last])
    mflops = mean_sd([r["mflops"] for r in last], 3)
    worst = f"{max(r['mflops'] for r in last):.3f}"
    empty = [r.get("empty_input_groups", 0) + r.get("empty_filter_groups", 0) for r in last]
    if not last[0]["reassign_per_layer"]:
        return f"| {name} | {VARIANTS[name][2]} | {len(runs)} | {accuracy} | {mflops} | {worst} | - | - |"
    epochs = len(next(iter(runs.values())))
    moves = ", ".join(
        f"{statistics.mean(rows[e]['reassign_inputs'] for rows in runs.values()):.0f}/"
        f"{statistics.mean(rows[e]['reassign_filters'] for rows in runs.values()):.0f}" for e in range(epochs))
    return (f"| {name} | {VARIANTS[name][2]} | {len(runs)} | {accuracy} | {mflops} | {worst} | "
            f"{mean_sd(empty, 1)} (max {max(empty)}) | {moves} |")


def table(out, names, seeds):
    lines = ["| variant | what | seeds | test acc., % | MMac (learned) | MMac, max | empty groups | "
             "reassigned inputs / filters per epoch (mean) |", "|:--|:--|--:|--:|--:|--:|--:|:--|"]
    for name in names:
        runs = finished_rows(out, name, seeds)
        lines.append(table_row(name, runs) if runs else f"| {name} | {VARIANTS[name][2]} | 0 | not run | | | | |")
    return "\n".join(lines)


def parse_list(text, what, convert=str):
    try:
        items = [convert(item) for item in text.split(",") if item]
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a comma list of integers, e.g. 0,1,2") from None
    if not items:
        raise UsageError(f"{what} is empty; give a comma list")
    return items


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="study directory; one run directory per variant and seed")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (integers >= 0)")
    parser.add_argument("--table-only", action="store_true", help="only print the table of what has run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    names = parse_list(args.variants, "--variants")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
    seeds = parse_list(args.seeds, "--seeds", int)
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {args.seeds}: seeds must be distinct integers >= 0")
    bad = [o for o in args.overrides if "=" not in o or o.startswith(("seed=", "out_dir="))]
    if bad:
        raise UsageError(f"bad override {bad[0]!r}; expected KEY=VALUE (seed and out_dir are set by the study)")
    if not args.table_only:
        for seed in seeds:
            for name in names:
                train(name, seed, args.out, args.overrides)
    print(table(args.out, names, seeds))


if __name__ == "__main__":
    run(main)
