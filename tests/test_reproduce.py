"""scripts/reproduce_gpu.sh's last step: slim checkpoints (checkpoint.save_slim) and one results JSON, from a tiny run."""
import json
import os
import subprocess

import pytest
import torch
from helpers import ROOT, assert_usage_error, write_tiny_cifar

from flgc.engine import checkpoint, config, training
from flgc.errors import UsageError


@pytest.mark.slow
def test_results_slim_checkpoints_and_report_each_row(tmp_path, call):
    data = write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    cfg = config.load("configs/fast/mbv2_flgc8.yaml", config.parse_overrides(
        [f"data.root={data}", "data.verify_checksums=false", "train.batch_size=16", "train.eval_batch_size=16",
         "train.epochs=1", "train.warmup_epochs=0", "train.progress=false", "train.compile=none",
         f"out_dir={tmp_path / 'mbv2_flgc8'}"]))
    last = training.fit(cfg)
    run_dir = str(tmp_path / "mbv2_flgc8")
    result = call("scripts/reproduce_gpu_results.py", str(tmp_path), run_dir)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["mbv2_flgc8"] and rows[0]["epochs"] == 1
    assert rows[0]["minutes"] == round(last["epoch_time_s"] / 60, 2) and rows[0]["hardware"] == last["hardware"]
    slim = checkpoint.load(str(tmp_path / "mbv2_flgc8.pt"))
    assert set(slim) == {"format_version", "config", "model"}
    full = checkpoint.load(str(tmp_path / "mbv2_flgc8" / "last.pt"))
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items()) and slim["config"] == full["config"]
    assert rows[0]["accuracy"] == full["metrics"]["test_accuracy"] and 50 < rows[0]["mflops"] < 75
    assert round((tmp_path / "mbv2_flgc8.pt").stat().st_size / 1e6, 2) == rows[0]["checkpoint_mb"]


def test_random_data_never_writes_over_other_files(tmp_path, call):
    written = tmp_path / "d" / "cifar-10-batches-py"
    assert call("scripts/reproduce_gpu_results.py", "--random-data", str(tmp_path / "d")).returncode == 0
    first = {p.name: p.read_bytes() for p in written.iterdir()}
    assert {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"} <= set(first)
    assert call("scripts/reproduce_gpu_results.py", "--random-data", str(tmp_path / "d")).returncode == 0  # its own: again
    assert {p.name: p.read_bytes() for p in written.iterdir()} == first  # the same images (seeded)
    real = tmp_path / "real" / "cifar-10-batches-py"
    real.mkdir(parents=True)
    (real / "data_batch_1").write_bytes(b"real images")
    result = call("scripts/reproduce_gpu_results.py", "--random-data", str(tmp_path / "real"))
    assert_usage_error(result, "already holds files that are not random data")
    assert sorted(p.name for p in real.iterdir()) == ["data_batch_1"]
    assert (real / "data_batch_1").read_bytes() == b"real images"


def test_results_refuse_an_unfinished_run_and_an_oversized_checkpoint(tmp_path, call, monkeypatch):
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    checkpoint.save(str(run_dir / "last.pt"), {"config": config.to_dict(config.from_dict({"train": {"epochs": 2}})),
                                               "model": {}, "epoch": 1})
    assert_usage_error(call("scripts/reproduce_gpu_results.py", str(tmp_path), str(run_dir)), "is not finished (1 of 2 epochs")
    assert_usage_error(call("scripts/reproduce_gpu_results.py", str(tmp_path)), "give the run directories")
    twin = tmp_path / "other" / "stopped"
    twin.mkdir(parents=True)
    result = call("scripts/reproduce_gpu_results.py", str(tmp_path / "out"), str(run_dir), str(twin))
    assert_usage_error(result, "two run directories named stopped")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    monkeypatch.setattr(checkpoint, "SLIM_LIMIT_BYTES", 1000)
    with pytest.raises(UsageError, match="over the 0 MB limit"):
        checkpoint.save_slim(str(tmp_path / "big.pt"), {"config": {}, "model": {"w": torch.zeros(1000)}})
    assert not (tmp_path / "big.pt").exists()


@pytest.mark.slow
def test_the_gpu_reproduction_rehearses_on_the_cpu_and_resumes(tmp_path):
    """bash scripts/reproduce_gpu.sh --rehearse (the CONTRACT's command): four rows trained through
    scripts/train_rows.sh, slimmed and summarised; run again, it leaves the finished rows as they are. Started
    from another directory, its relative --out is read from there."""
    out = tmp_path / "rehearsal"
    for _ in range(2):
        done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "reproduce_gpu.sh"), "--rehearse", "--out",
                               "rehearsal"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="2"))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["mbv2_baseline", "mbv2_sgc8", "mbv2_flgc8", "mbv2_flgc8both"]
    assert all(r["epochs"] == 2 and (out / r["checkpoint"]).is_file() for r in rows)
    assert "is complete: 2 of 2 epochs trained" in (out / "fast" / "mbv2_flgc8.log").read_text()


def test_train_rows_refuses_an_unknown_runtime_setting_before_training(tmp_path):
    refused = subprocess.run(["bash", "scripts/train_rows.sh", "fast", "sgc8"], cwd=ROOT, capture_output=True,
                             text=True, env=dict(os.environ, RUNTIME="bogus", RUNS=str(tmp_path / "runs")))
    assert refused.returncode == 2 and "unknown setting 'bogus'; allowed: default" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script, bad, message", [
    ("train_rows.sh", ["no-such-recipe"], "unknown recipe 'no-such-recipe'; allowed:"),
    ("reproduce_gpu.sh", ["--out"], "--out needs a directory"),
    ("reproduce_gpu.sh", ["--fast"], "unknown argument '--fast'; allowed: --rehearse, --out DIR")])
def test_the_shell_scripts_print_their_usage_and_refuse_bad_arguments(script, bad, message):
    helped = subprocess.run(["bash", f"scripts/{script}", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and f"bash scripts/{script}" in helped.stdout and "#" not in helped.stdout
    refused = subprocess.run(["bash", f"scripts/{script}", *bad], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith(f"{script}: {message}")
    assert len(refused.stderr.strip().splitlines()) == 1
