"""The run directory's logs: metrics.jsonl (one JSON object per epoch), TensorBoard scalars and
figures, and the one-line summary printed per epoch; and reading metrics.jsonl back."""
import json
import os
import statistics

from ..errors import UsageError
from ..extras import require
from ..method.layer import flgc_layers
from . import config as config_lib

METRICS = "metrics.jsonl"


def read_metrics(run_dir):
    """The rows of RUN_DIR/metrics.jsonl, oldest first; a missing or damaged file raises UsageError."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist; RUN_DIR is a train.py out_dir")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path} line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    return rows


def restore_lost_row(out_dir, state):
    """Append the row of the epoch that the checkpoint `state` (OUT_DIR/last.pt) ends with, when a kill
    between that checkpoint and its metrics.jsonl row lost it: the log ends one epoch short, or is
    missing after epoch 1. Returns the row restored, or None; RunLog.write_scalars puts it in
    TensorBoard too. A damaged log is left for read_metrics to report, and checkpoints written before
    rows were kept whole hold only their numbers and restore nothing."""
    row, path = state.get("metrics"), os.path.join(out_dir, METRICS)
    if state.get("step") or not isinstance(row, dict) or "hardware" not in row or row.get("epoch") != state["epoch"]:
        return None
    try:
        logged = read_metrics(out_dir) if os.path.isfile(path) else []
    except UsageError:
        return None
    if (logged[-1].get("epoch") if logged else 0) != state["epoch"] - 1:
        return None
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def training_time(epoch_seconds):
    """(minutes, median epoch seconds) of a run's `epoch_time_s` values: the sum counts every pause and
    shared core, the median is what an epoch takes alone while most epochs ran alone; (None, None)
    for no epochs."""
    if not epoch_seconds:
        return None, None
    return sum(epoch_seconds) / 60, statistics.median(epoch_seconds)


def is_run_dir(path):
    """Whether `path` holds a training run: its config.yaml beside its metrics.jsonl or last.pt."""
    return os.path.isfile(os.path.join(path, "config.yaml")) and (
        os.path.isfile(os.path.join(path, METRICS)) or os.path.isfile(os.path.join(path, "last.pt")))


def progress(run_dir):
    """Where the run in RUN_DIR stands, from its config.yaml and metrics.jsonl (nothing is loaded into a
    model): epochs done of the run's train.epochs (as last saved), the last evaluated accuracy and its
    epoch, minutes and median epoch seconds of those epochs, and the hours the remaining epochs take at
    that median. A damaged file raises UsageError."""
    epochs = config_lib.load(os.path.join(run_dir, "config.yaml")).train.epochs
    rows = read_metrics(run_dir) if os.path.isfile(os.path.join(run_dir, METRICS)) else []
    done = [r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] <= epochs]
    evaluated = [r for r in done if r.get("test_accuracy") is not None]
    minutes, median = training_time([r["epoch_time_s"] for r in done if r.get("epoch_time_s") is not None])
    last = done[-1]["epoch"] if done else 0
    return {"run_dir": run_dir, "epochs_done": last, "epochs": epochs, "complete": last >= epochs,
            "eval_split": done[-1].get("eval_split", "test") if done else "test",
            "accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
            "accuracy_epoch": evaluated[-1]["epoch"] if evaluated else None,
            "minutes": minutes, "median_epoch_s": median,
            "hours_left": None if median is None else (epochs - last) * median / 3600}


def row_provenance(row, key):
    """The `key` ("hardware" or "commit") of every run that trained the epoch of metrics row `row`: the
    row's own, or each of its `epoch_provenance` when runs resumed inside the epoch (None: not recorded)."""
    return [entry.get(key) for entry in row.get("epoch_provenance") or [row]]


def trained_by(rows, key):
    """The distinct recorded `key` values of the metrics rows `rows`, in the order they first trained."""
    found = []
    for row in rows:
        for value in row_provenance(row, key):
            if value and value not in found:
                found.append(value)
    return found


def scalars(row):
    """The entries of a metrics row that are numbers (or None): what TensorBoard keeps."""
    return {k: v for k, v in row.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def summary_line(row, epochs):
    split = "val" if row.get("eval_split") == "validation" else "test"
    test = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.2f}%"
    best = "-" if row.get("best_accuracy") is None else f"{row['best_accuracy']:.2f}%"  # none before any evaluation
    line = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  train {row['train_accuracy']:.2f}%  "
            f"{split} {test}  best {best}  lr {row['lr']:.4g}  {row['mflops']:.2f} MMac")
    if row["reassign_per_layer"]:
        line += (f"  reg {row['regularizer']:.4f}  reassigned: {row['reassign_inputs']} inputs, "
                 f"{row['reassign_filters']} filters; from the start: {row['moved_inputs']} inputs, "
                 f"{row['moved_filters']} filters")
    return line + f"  {row['epoch_time_s']:.1f}s"


def check_plotting(plot_interval):
    """UsageError (one line) when figures are asked for (flgc.plot_interval > 0) and matplotlib is missing."""
    if plot_interval:
        require("matplotlib", "flgc.plot_interval > 0 (group figures in TensorBoard)")


class RunLog:
    """Writes one run's logs; only the main process of a run makes one. TensorBoard's event file is
    opened on the first row, so a run that trains nothing leaves none."""

    def __init__(self, out_dir, epochs, log_per_layer=False, plot_interval=0):
        check_plotting(plot_interval)
        self.out_dir, self.epochs = out_dir, epochs
        self.log_per_layer, self.plot_interval = log_per_layer, plot_interval
        self.writer = None

    def _tensorboard(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.out_dir)
        return self.writer

    def write(self, row, model):
        """Append `row` to metrics.jsonl, log its numbers (and, when due, the group figure of
        `model`) to TensorBoard, and print the summary line."""
        epoch = row["epoch"]
        with open(os.path.join(self.out_dir, METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")
        self.write_scalars(row)
        due = self.plot_interval and (epoch % self.plot_interval == 0 or epoch == self.epochs)
        if due and flgc_layers(model):
            from .plots import group_figure
            self._tensorboard().add_figure("groups", group_figure(model), epoch)
        self._tensorboard().flush()
        print(summary_line(row, self.epochs), flush=True)

    def write_scalars(self, row):
        """Log the numbers of `row` (one epoch) to TensorBoard at its epoch (written out by write's
        flush or by close)."""
        writer, epoch = self._tensorboard(), row["epoch"]
        for key, value in scalars(row).items():
            if key != "epoch" and value is not None:
                writer.add_scalar(key, value, epoch)
        if self.log_per_layer:
            for name, (moved_inputs, moved_filters) in row["reassign_per_layer"].items():
                writer.add_scalar(f"reassign_per_layer/{name}/inputs", moved_inputs, epoch)
                writer.add_scalar(f"reassign_per_layer/{name}/filters", moved_filters, epoch)

    def close(self):
        if self.writer is not None:
            self.writer.close()
