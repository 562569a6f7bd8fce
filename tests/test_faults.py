"""Faults: bit-exact resume, SIGTERM, NaN loss, kill -9 during a save, and 2-process training."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, run_cli, write_tiny_cifar

from flgc import checkpoint, config, engine


def tiny_cfg(tmp_path, out, *overrides):
    root = tmp_path / "data"
    if not root.exists():
        write_tiny_cifar(str(root), per_batch=16, test=16)
    return config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(
        [f"data.root={root}", "data.verify_checksums=false", "train.batch_size=16", "train.eval_batch_size=16",
         "train.progress=false", f"out_dir={tmp_path / out}", "train.milestones=[1]", *overrides]))


def parameters(path):
    return checkpoint.load(str(path))["model"]


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_after_an_epoch_is_bit_exact(tmp_path):
    engine.fit(tiny_cfg(tmp_path, "straight", "train.epochs=2"))
    engine.fit(tiny_cfg(tmp_path, "split", "train.epochs=1"))
    engine.fit(tiny_cfg(tmp_path, "split", "train.epochs=2"), resume="auto")
    assert_identical(parameters(tmp_path / "straight" / "last.pt"), parameters(tmp_path / "split" / "last.pt"))


def test_stop_inside_an_epoch_saves_and_resumes_bit_exact(tmp_path, monkeypatch, capsys):
    engine.fit(tiny_cfg(tmp_path, "straight", "train.epochs=2"))
    calls = {"n": 0}

    def stop_later(self):
        calls["n"] += 1
        if calls["n"] >= 9:  # once per epoch start and per step (5 a epoch): epoch 2, after step 2
            self.signal = signal.SIGTERM
        return self.signal is not None

    monkeypatch.setattr(engine.StopRequest, "__call__", stop_later)
    engine.fit(tiny_cfg(tmp_path, "split", "train.epochs=2"))
    assert "stopped by SIGTERM in epoch 2" in capsys.readouterr().out
    saved = checkpoint.load(str(tmp_path / "split" / "last.pt"))
    assert saved["epoch"] == 1 and saved["step"] == 2
    monkeypatch.undo()
    engine.fit(tiny_cfg(tmp_path, "split", "train.epochs=2"), resume="auto")
    assert_identical(parameters(tmp_path / "straight" / "last.pt"), parameters(tmp_path / "split" / "last.pt"))
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["train_loss"] == pytest.approx(json.loads(straight[-1])["train_loss"])


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    engine.fit(tiny_cfg(tmp_path, "run", "train.epochs=1"))
    good = (tmp_path / "run" / "last.pt").read_bytes()
    monkeypatch.setattr(engine.F, "cross_entropy", lambda logits, labels: logits.sum() * float("nan"))
    with pytest.raises(engine.Diverged, match="epoch 2 step 0"):
        engine.fit(tiny_cfg(tmp_path, "run", "train.epochs=2"), resume="auto")
    assert (tmp_path / "run" / "last.pt").read_bytes() == good


def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path):
    write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    args = ["train.py", "--config", "configs/mbv2_flgc8.yaml", f"out_dir={tmp_path / 'run'}",
            f"data.root={tmp_path / 'data'}", "data.verify_checksums=false", "train.batch_size=8",
            "train.progress=false", "train.epochs=1000", "threads=1"]
    env = dict(os.environ)
    child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "Resume with" in out and "--resume auto" in out
    assert checkpoint.load(str(tmp_path / "run" / "last.pt"))["epoch"] >= 1
    resumed = run_cli(*args[:-1], "train.epochs=3", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(str(tmp_path / "run" / "last.pt"))["epoch"] == 3


SAVER = """
import sys, torch
from flgc import checkpoint
payload = {{"config": {{}}, "model": {{"w": torch.randn(2_000_000)}}, "epoch": 0}}
for i in range(10**6):
    payload["epoch"] = i
    checkpoint.save({path!r}, payload)
    print(i, flush=True)
"""


def test_kill_during_save_never_leaves_a_corrupt_file(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.35, 0.5, 0.65, 0.8, 0.95):
        child = subprocess.Popen([sys.executable, "-c", SAVER.format(root=ROOT, path=str(path))],
                                 stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # one save has completed
        time.sleep(delay)
        child.kill()
        child.wait()
        assert checkpoint.load(str(path))["epoch"] >= 0


def update_deviation(start, one, other):
    """90th percentile over tensors of max|update difference| / max|update|, for the tensors whose
    update is not negligible (BN biases feeding another BN get ~0 gradient: pure rounding)."""
    ratios, largest = [], max(float((one[k] - start[k]).abs().max()) for k in one if one[k].is_floating_point())
    for key in one:
        if not one[key].is_floating_point():
            continue
        step = (one[key] - start[key]).abs().max()
        if step > 1e-3 * largest:
            ratios.append(float((one[key] - other[key]).abs().max() / step))
    return float(torch.tensor(ratios).quantile(0.9))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    """One step with a global batch of 16: torchrun with 2 gloo processes (8 images each, BatchNorm
    statistics synchronised) must make the update one process makes, as closely as one process
    agrees with itself under another thread count and memory layout (float summation order)."""
    write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    common = ["--config", "configs/mbv2_flgc8.yaml", f"data.root={tmp_path / 'data'}",
              "data.verify_checksums=false", "train.batch_size=16", "train.progress=false", "train.epochs=1",
              "data.train_subset=16", "train.lr=0.01", "train.momentum=0"]
    for name, extra in (("one", ["threads=1"]), ("control", ["threads=2", "train.channels_last=false"])):
        result = run_cli("train.py", *common, *extra, f"out_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29533", "train.py", *common, "threads=1", f"out_dir={tmp_path / 'two'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    cfg = config.load("configs/mbv2_flgc8.yaml")
    torch.manual_seed(cfg.seed)
    from flgc.builders import build_model
    start = build_model(cfg).state_dict()
    one, two, control = (parameters(tmp_path / n / "last.pt") for n in ("one", "two", "control"))
    assert one.keys() == two.keys()
    assert torch.equal(one["features.0.1.num_batches_tracked"], two["features.0.1.num_batches_tracked"])
    noise = update_deviation(start, one, control)
    assert update_deviation(start, one, two) <= 2 * noise + 0.01
