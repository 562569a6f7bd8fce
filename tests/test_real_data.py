"""Brief training on the CIFAR-10 copy in ../shared/data, when it is there (skipped otherwise)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import SHARED_DATA, run_cli

BUILDER = os.path.join(SHARED_DATA, "build_cifar10.py")


@pytest.mark.skipif(not os.path.isfile(BUILDER), reason="CIFAR-10 copy not present in ../shared/data")
def test_short_flgc8_run_learns_and_moves_groups(tmp_path):
    subprocess.run([sys.executable, BUILDER, str(tmp_path / "data")], check=True, capture_output=True)
    out = tmp_path / "run"
    # 4,000 training images (the exactly-preserved ones), 4 epochs: about 2 minutes on 2 cores
    result = run_cli("train.py", "--config", "configs/mbv2_flgc8.yaml", f"out_dir={out}",
                     f"data.root={tmp_path / 'data'}", "data.verify_checksums=false",
                     "data.train_subset=4000", "data.test_subset=1000", "train.epochs=4",
                     "train.progress=false", "threads=2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # observed here: 35.7% and 38.7% after 4 epochs in two versions of the pipeline; chance is 10%
    assert rows[-1]["test_accuracy"] > 25.0
    assert sum(r["reassign_inputs"] + r["reassign_filters"] for r in rows) > 0
