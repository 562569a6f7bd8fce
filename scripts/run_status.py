"""Where training runs stand: epochs done, last evaluated accuracy, time so far and the time left.

python scripts/run_status.py [DIR ...] [--json]
Each DIR is a run directory (a train.py out_dir) or a folder of them, such as RUNS/RECIPE of
scripts/train_rows.sh; default: every run under $RUNS (train_rows.sh's, default ~/flgc-runs). It reads
each run's config.yaml and metrics.jsonl only, so it is safe to run beside a training run; a run that
has not saved anything yet is not listed, and one whose files cannot be read gets a line saying why.
The hours left are the remaining epochs at the run's median epoch so far (on the hardware it ran on).
"""
import json
import os

from flgc.engine.cli import ArgumentParser, run
from flgc.engine.runlog import is_run_dir, progress
from flgc.errors import UsageError

DEFAULT_RUNS = os.path.join("~", "flgc-runs")  # train_rows.sh's default RUNS


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
            raise UsageError(f"{path} is neither a run directory (config.yaml with metrics.jsonl or last.pt) "
                             f"nor holds one")
        found.extend(runs)
    return found


def read_status(run_dir):
    """progress(run_dir), or {run_dir, error} when its files cannot be read (e.g. half written)."""
    try:
        return progress(run_dir)
    except UsageError as err:
        return {"run_dir": run_dir, "error": str(err)}


def line(status):
    if "error" in status:
        return f"{status['run_dir']}: cannot be read ({status['error']})"
    state = "complete" if status["complete"] else f"{status['epochs_done']}/{status['epochs']} epochs"
    accuracy = "-" if status["accuracy"] is None else f"{status['accuracy']:.2f}% (epoch {status['accuracy_epoch']})"
    median = "-" if status["median_epoch_s"] is None else f"{status['median_epoch_s']:.0f} s"
    spent = "-" if status["minutes"] is None else f"{status['minutes'] / 60:.1f} h"
    left = "" if status["complete"] or status["hours_left"] is None else f", about {status['hours_left']:.1f} h left"
    split = "val" if status["eval_split"] == "validation" else "test"
    return f"{status['run_dir']}: {state}, {split} {accuracy}, median epoch {median}, {spent} trained{left}"


def main(argv=None):
    parser = ArgumentParser(prog="run_status.py", description=__doc__)
    parser.add_argument("dirs", nargs="*", metavar="DIR")
    parser.add_argument("--json", action="store_true", help="one JSON list of the runs' figures")
    args = parser.parse_args(argv)
    statuses = [read_status(d) for d in run_dirs(args.dirs or [os.path.expanduser(os.environ.get("RUNS", DEFAULT_RUNS))])]
    print(json.dumps(statuses, indent=1) if args.json else "\n".join(line(s) for s in statuses))


if __name__ == "__main__":
    run(main)
