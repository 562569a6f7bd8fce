"""Real CIFAR-10 images, when FLGC_CIFAR10_ROOT names a directory that holds cifar-10-batches-py/ (the
official files or a re-encoded copy); skipped otherwise: a brief training run, and every released checkpoint
evaluated to its manifest accuracy: on images 0-999 always (their pixels are exact in the copy the releases
were measured on), on all 10,000 where the files are of the kind the entry names (official or not)."""
import json
import os

import pytest
import torch
from helpers import CIFAR10_ROOT, ROOT, run_cli

from flgc.engine import checkpoint, data, evaluation
from flgc.records import releases
from flgc.records.manifest import OFFICIAL_DATA, load_manifest, verified

pytestmark = pytest.mark.slow
needs_cifar10 = pytest.mark.skipif(
    not (CIFAR10_ROOT and os.path.isdir(os.path.join(CIFAR10_ROOT, "cifar-10-batches-py"))),
    reason="set FLGC_CIFAR10_ROOT to a directory holding cifar-10-batches-py/")
CHECKPOINTS = os.path.join(ROOT, "checkpoints")


@needs_cifar10
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


@needs_cifar10
@pytest.mark.parametrize("entry", load_manifest(os.path.join(CHECKPOINTS, "manifest.json")),
                         ids=lambda entry: entry["name"])
def test_released_checkpoint_reproduces_its_manifest_accuracy(entry):
    # 25-45 s a checkpoint on 2 cores (10,000 test images)
    path = os.path.join(CHECKPOINTS, entry["file"])
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not here; fetch it with scripts/download_checkpoints.py {entry['name']}")
    assert verified(path, entry), f"{path} does not match the size and sha256 of {entry['name']}"
    overrides = releases.check_release_overrides([("data.root", CIFAR10_ROOT), ("data.download", False),
                                                  ("data.verify_checksums", False)])
    same_kind = data.official_files(CIFAR10_ROOT) == entry["data"].startswith(OFFICIAL_DATA)
    if not same_kind and "accuracy_first_1000" not in entry:
        pytest.skip(f"{entry['name']} was measured on other files ({entry['data']}) and has no images 0-999 figure")
    threads = torch.get_num_threads()
    try:
        model, cfg, _ = checkpoint.load_model(path, overrides)
        test = evaluation.test_metrics(model, cfg) if same_kind else None
        first = evaluation.test_metrics(model, releases.first_images_config(cfg)) \
            if "accuracy_first_1000" in entry else None
    finally:
        torch.set_num_threads(threads)  # the checkpoint's threads key must not change the tests that follow
    if test is not None:
        assert test["images"] == entry["test_images"]
        assert abs(test["accuracy"] - entry["accuracy"]) <= releases.TOLERANCE, (test["accuracy"], entry["accuracy"])
    if first is not None:
        assert first["images"] == releases.FIRST_IMAGES
        assert abs(first["accuracy"] - entry["accuracy_first_1000"]) <= releases.TOLERANCE, \
            (first["accuracy"], entry["accuracy_first_1000"])
