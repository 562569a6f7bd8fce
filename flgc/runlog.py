"""The run log of a training run directory: metrics.jsonl, one JSON object per epoch."""
import json
import os

from .errors import UsageError

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
