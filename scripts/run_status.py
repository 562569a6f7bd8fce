"""Where training runs stand: epochs done, last evaluated accuracy, time so far and the time left.

python scripts/run_status.py [DIR ...] [--json]
Each DIR is a run directory (a train.py out_dir) or a folder of them, such as RUNS/RECIPE of
scripts/train_rows.sh; default: every recipe folder under ~/flgc-runs. It reads each run's config.yaml
and metrics.jsonl only, so it is safe to run beside a training run. The hours left are the remaining
epochs at the run's median epoch so far (on the hardware it ran on; a run in its first epoch has none).
"""
import json
import os

from flgc.engine.cli import ArgumentParser, run
from flgc.engine.runlog import is_run_dir, progress
from flgc.errors import UsageError

DEFAULT_RUNS = os.path.join("~", "flgc-runs")


def runs_in(path):
    """`path` itself when it is a run directory, else the run directories anywhere below it."""
    if is_run_dir(path):
        return [path]
    inside = sorted(os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(path) else []
    return [run_dir for p in inside if os.path.isdir(p) for run_dir in runs_in(p)]


def run_dirs(paths):
    found = []
    for path in paths:
        runs = runs_in(path)
        if not runs:
            raise UsageError(f"{path} is neither a run directory (config.yaml and metrics.jsonl) nor holds one")
        found.extend(runs)
    return found


def line(status):
    state = "complete" if status["complete"] else f"{status['epochs_done']}/{status['epochs']} epochs"
    accuracy = "-" if status["accuracy"] is None else f"{status['accuracy']:.2f}% (epoch {status['accuracy_epoch']})"
    median = "-" if status["median_epoch_s"] is None else f"{status['median_epoch_s']:.0f} s"
    spent = "-" if status["minutes"] is None else f"{status['minutes'] / 60:.1f} h"
    left = "" if status["complete"] or status["hours_left"] is None else f", about {status['hours_left']:.1f} h left"
    return f"{status['run_dir']}: {state}, test {accuracy}, median epoch {median}, {spent} trained{left}"


def main(argv=None):
    parser = ArgumentParser(prog="run_status.py", description=__doc__)
    parser.add_argument("dirs", nargs="*", metavar="DIR")
    parser.add_argument("--json", action="store_true", help="one JSON list of the runs' figures")
    args = parser.parse_args(argv)
    statuses = [progress(d) for d in run_dirs(args.dirs or [os.path.expanduser(DEFAULT_RUNS)])]
    print(json.dumps(statuses, indent=1) if args.json else "\n".join(line(s) for s in statuses))


if __name__ == "__main__":
    run(main)
