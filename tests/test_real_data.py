"""Brief training on real CIFAR-10 images, when FLGC_CIFAR10_ROOT names a directory that holds
cifar-10-batches-py/ (the official files or a re-encoded copy); skipped otherwise."""
import json
import os

import pytest
from helpers import CIFAR10_ROOT, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (CIFAR10_ROOT and os.path.isdir(os.path.join(CIFAR10_ROOT, "cifar-10-batches-py"))),
                    reason="set FLGC_CIFAR10_ROOT to a directory holding cifar-10-batches-py/")
def test_short_flgc8_run_learns_and_moves_groups(tmp_path):
    out = tmp_path / "run"
    # 4,000 training images, 4 epochs: about 2 minutes on 2 cores
    result = run_cli("train.py", "--config", "configs/mbv2_flgc8.yaml", f"out_dir={out}",
                     f"data.root={CIFAR10_ROOT}", "data.verify_checksums=false",
                     "data.train_subset=4000", "data.test_subset=1000", "train.epochs=4",
                     "train.progress=false", "threads=2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # chance is 10%; 4 epochs on 4,000 images reach well above it
    assert rows[-1]["test_accuracy"] > 25.0
    assert sum(r["reassign_inputs"] + r["reassign_filters"] for r in rows) > 0
