"""Learning-dynamics study: train several SGC / FLGC variants with one budget and tabulate them.

python scripts/learning_study.py --out runs/study [--variants a,b,...] [KEY=VALUE ...]

Every variant is a train.py run in OUT/VARIANT (resumed when it exists, so an interrupted study
continues); KEY=VALUE overrides go to every run (e.g. data.root=DIR data.train_subset=10000).
The table: final test accuracy, MMac of the learned structure, and group reassignments per epoch
(input channels / filters, summed over the FLGC layers).
"""
import json
import os
import subprocess
import sys

from flgc.cli import ArgumentParser, run
from flgc.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STD = "flgc.logit_init_std"
VARIANTS = {  # name: (config, overrides); every FLGC row but the reference ones uses our gradient
    "sgc8": ("mbv2_sgc8", []),
    "flgc8": ("mbv2_flgc8", []),  # the defaults: logits N(0, 0.1^2), balance regularizer 0.1
    "flgc8-logit-std-0.01": ("mbv2_flgc8", [f"{STD}=0.01"]),
    "flgc8-reference-masked": ("mbv2_flgc8", [f"{STD}=0.01", "flgc.gradient=reference_masked"]),
    "flgc8-reference-init": ("mbv2_flgc8", [f"{STD}=1.0"]),
    "flgc8-reference-exact": ("mbv2_flgc8", ["flgc.gradient=reference_masked", f"{STD}=1.0",
                                             "flgc.regularizer.kind=none"]),
    "flgc8-std-0.01-reg-none": ("mbv2_flgc8", [f"{STD}=0.01", "flgc.regularizer.kind=none"]),
    "flgc8-std-0.01-reg-budget": ("mbv2_flgc8", [f"{STD}=0.01", "flgc.regularizer.kind=budget"]),
}


def train(name, out, overrides):
    config, extra = VARIANTS[name]
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
               os.path.join(ROOT, "configs", f"{config}.yaml"), f"out_dir={os.path.join(out, name)}",
               "train.progress=false", *extra, *overrides, "--resume", "auto"]
    print("$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UsageError(f"variant {name} failed (see its output above)")


def table(out, names):
    lines = ["| variant | test acc., % | MMac (learned) | reassigned inputs / filters per epoch |",
             "|:--|--:|--:|:--|"]
    for name in names:
        path = os.path.join(out, name, "metrics.jsonl")
        if not os.path.isfile(path):
            lines.append(f"| {name} | not run | | |")
            continue
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        moves = ", ".join(f"{r['reassign_inputs']}/{r['reassign_filters']}" for r in rows)
        accuracy = rows[-1]["test_accuracy"]
        lines.append(f"| {name} | {accuracy:.2f} | {rows[-1]['mflops']:.2f} | {moves if rows[0]['reassign_per_layer'] else '-'} |")
    return "\n".join(lines)


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="study directory; one run directory per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--table-only", action="store_true", help="only print the table of what has run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
    if not args.table_only:
        for name in names:
            train(name, args.out, args.overrides)
    print(table(args.out, names))


if __name__ == "__main__":
    run(main)
