"""Learning-dynamics study: train SGC8 and FLGC8 variants over several seeds and tabulate mean ± sd.

python scripts/learning_study.py --out runs/study [--recipe cpu-long] [--variants a,b,...] [--seeds 0,1,2]
       [--table-only] [KEY=VALUE ...]

Every (variant, seed) is a train.py run in OUT/VARIANT/seedN of configs/RECIPE/<variant's config>.yaml,
resumed when it exists, so an interrupted study continues; runs go seed by seed (every variant's seed 0
first), so a study cut short still has whole seeds. KEY=VALUE overrides go to every run (e.g.
data.root=DIR data.train_subset=5000; data.validation_images=5000 evaluates on held-out training images).
The table (Markdown, on stdout): per variant, mean ± sd over the seeds that finished of the final test
(or validation) accuracy and of the last epoch's training loss, the MMac of the learned structure (and its
maximum), the empty input + filter groups, the group reassignments per epoch and the input channels /
filters in another group than at the start after the last epoch (summed over the FLGC layers).

A variant means the same under every recipe: each FLGC8 run first sets the keys of assignment learning
(LEARNING_KEYS) to their schema defaults, whatever the recipe's file holds (configs/cpu-long's FLGC8 sets
a budget, the logit lr and a freeze), then the variant's own; the recipe gives the schedule, the data
and the precision.
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

# the flgc keys of how the assignments learn (not which convs are FLGC, nor logging)
LEARNING_KEYS = ("flgc.weight_gradient", "flgc.init", "flgc.logit_init_std", "flgc.logit_lr_scale",
                 "flgc.logit_weight_decay", "flgc.freeze_epoch", "flgc.temperature_start", "flgc.temperature_end",
                 "flgc.regularizer.kind", "flgc.regularizer.weight", "flgc.regularizer.target_mflops",
                 "flgc.regularizer.target_fraction")
BUDGET = ["flgc.regularizer.kind=budget", "flgc.regularizer.target_mflops=62.62"]
VARIANTS = {  # name: (config, overrides, description)
    "sgc8": ("mbv2_sgc8", [], "standard group conv, G=8"),
    "flgc8-balance": ("mbv2_flgc8", [], "defaults: uniform init, balance"),
    "flgc8-none": ("mbv2_flgc8", ["flgc.regularizer.kind=none"], "uniform init, no regularizer"),
    "flgc8-budget-62.6": ("mbv2_flgc8", ["flgc.regularizer.kind=budget", "flgc.regularizer.target_mflops=62.6"],
                          "uniform init, budget <= 62.6 MMac"),
    "flgc8-balance-random-init": ("mbv2_flgc8", ["flgc.init=random"], "random init (former), balance"),
    # the FLGC8 setting study of the long recipe (--recipe cpu-long; docs/learning.md): budget at SGC8's cost
    "flgc8-budget-s10": ("mbv2_flgc8", [*BUDGET, "flgc.logit_lr_scale=10"], "budget <= 62.62, logit lr x10"),
    "flgc8-budget-s100": ("mbv2_flgc8", [*BUDGET, "flgc.logit_lr_scale=100"], "budget <= 62.62, logit lr x100"),
    "flgc8-budget-s0": ("mbv2_flgc8", [*BUDGET, "flgc.logit_lr_scale=0"],
                        "budget <= 62.62, logits not trained (the projection's moves only)"),
    "flgc8-budget-s3": ("mbv2_flgc8", [*BUDGET, "flgc.logit_lr_scale=3"], "budget <= 62.62, logit lr x3"),
    "flgc8-budget-s10-dense": ("mbv2_flgc8", [*BUDGET, "flgc.logit_lr_scale=10", "flgc.weight_gradient=dense"],
                               "budget <= 62.62, logit lr x10, dense weight gradient"),
}


def run_dir(out, name, seed):
    return os.path.join(out, name, f"seed{seed}")


def variant_overrides(name):
    """KEY=VALUE overrides of the variant `name`: for an FLGC8 variant the LEARNING_KEYS at their schema
    defaults, then its own."""
    config_name, extra, _ = VARIANTS[name]
    if config_name != "mbv2_flgc8":
        return list(extra)
    defaults = config.Config()
    reset = [f"{key}={'null' if config.get(defaults, key) is None else config.get(defaults, key)}"
             for key in LEARNING_KEYS]
    return reset + list(extra)


def train(name, seed, out, overrides, recipe):
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
               os.path.join(ROOT, "configs", recipe, f"{VARIANTS[name][0]}.yaml"), f"out_dir={run_dir(out, name, seed)}",
               f"seed={seed}", "train.progress=false", *variant_overrides(name), *overrides, "--resume", "auto"]
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
    """'mean ± sd' over several values; one value alone (one seed has no spread to show)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table_row(name, runs):
    last = [rows[-1] for rows in runs.values()]
    accuracy = mean_sd([r["test_accuracy"] for r in last])
    loss = mean_sd([r["train_loss"] for r in last], 3)
    mflops = mean_sd([r["mflops"] for r in last], 3)
    worst = f"{max(r['mflops'] for r in last):.3f}"
    empty = [r.get("empty_input_groups", 0) + r.get("empty_filter_groups", 0) for r in last]
    head = f"| {name} | {VARIANTS[name][2]} | {len(runs)} | {accuracy} | {loss} | {mflops} | {worst} | "
    if not last[0]["reassign_per_layer"]:
        return head + "- | - | - |"
    epochs = len(next(iter(runs.values())))
    moves = ", ".join(
        f"{statistics.mean(rows[e]['reassign_inputs'] for rows in runs.values()):.0f}/"
        f"{statistics.mean(rows[e]['reassign_filters'] for rows in runs.values()):.0f}" for e in range(epochs))
    if "moved_inputs" in last[0]:  # rows written before the from-start count existed lack it
        inputs = statistics.mean(r["moved_inputs"] for r in last)
        filters = statistics.mean(r["moved_filters"] for r in last)
        moved = f"{inputs:.0f} / {filters:.0f}"
    else:
        moved = "-"
    return head + f"{mean_sd(empty, 1)} (max {max(empty)}) | {moves} | {moved} |"


def table(out, names, seeds):
    runs = {name: finished_rows(out, name, seeds) for name in names}
    split = {rows[-1].get("eval_split", "test") for found in runs.values() for rows in found.values()}
    accuracy = "validation acc., %" if split == {"validation"} else "test acc., %" if split <= {"test"} else \
        "test or validation acc., % (see the runs)"
    lines = [f"| variant | what | seeds | {accuracy} | train loss, last epoch | MMac (learned) | MMac, max | "
             "empty groups | reassigned inputs / filters per epoch (mean) | inputs / filters in another group "
             "than at the start (mean) |", "|:--|:--|--:|--:|--:|--:|--:|--:|:--|--:|"]
    for name in names:
        lines.append(table_row(name, runs[name]) if runs[name] else
                     f"| {name} | {VARIANTS[name][2]} | 0 | not run | | | | | | |")
    return "\n".join(lines)


def check_recipe(recipe, names):
    """UsageError unless configs/RECIPE holds the config file of every variant in `names`."""
    folder = os.path.join(ROOT, "configs", recipe)
    have = {f[:-len(".yaml")] for f in os.listdir(folder) if f.endswith(".yaml")} if os.path.isdir(folder) else set()
    missing = sorted({VARIANTS[n][0] for n in names} - have)
    if missing:
        raise UsageError(f"--recipe {recipe!r}: configs/{recipe} has no {', '.join(f + '.yaml' for f in missing)}; "
                         f"give a subfolder of configs/ that holds the variants' files (e.g. cpu, cpu-long)")


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
    parser.add_argument("--recipe", default="", help="configs subfolder of the variants' files, e.g. cpu-long "
                        "(default: configs/ itself, the reference recipe)")
    parser.add_argument("--table-only", action="store_true", help="only print the table of what has run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    names = parse_list(args.variants, "--variants")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
    check_recipe(args.recipe, names)
    seeds = parse_list(args.seeds, "--seeds", int)
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {args.seeds}: seeds must be distinct integers >= 0")
    bad = [o for o in args.overrides if "=" not in o or o.startswith(("seed=", "out_dir="))]
    if bad:
        raise UsageError(f"bad override {bad[0]!r}; expected KEY=VALUE (seed and out_dir are set by the study)")
    if not args.table_only:
        for seed in seeds:
            for name in names:
                train(name, seed, args.out, args.overrides, args.recipe)
    print(table(args.out, names, seeds))


if __name__ == "__main__":
    run(main)
