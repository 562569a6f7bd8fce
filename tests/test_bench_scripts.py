"""The benchmark scripts run end to end at toy sizes and keep their JSON contract."""
import json

import torch
from helpers import run_cli, write_tiny_cifar


def last_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_data_reports_both_pipelines(tmp_path):
    root = write_tiny_cifar(str(tmp_path), per_batch=60)  # 300 images: 3 batches of 128
    out = last_json(run_cli("scripts/bench_data.py", f"data.root={root}", "data.verify_checksums=false",
                            "--batches", "1", "--rounds", "1", "--workers", "0", "--json"))
    assert out["ours_images_per_s"] > 0 and out["reference_images_per_s"] > 0


def test_bench_train_variants_settings_and_one_row():
    out = last_json(run_cli("scripts/bench_train.py", "--batch", "2", "--repeats", "1", "--json"))
    assert [r["variant"] for r in out["results"]] == ["dense", "sgc8", "flgc8", "flgc8-frozen",
                                                      "flgc8-frozen-grouped"]
    assert all(r["ms_per_step"] > 0 for r in out["results"])
    out = last_json(run_cli("scripts/bench_train.py", "--settings", "--only", "bf16 channels_last",
                            "--batch", "2", "--repeats", "1", "--json"))
    assert [r["setting"] for r in out["results"]] == ["bf16 channels_last"]
    out = last_json(run_cli("scripts/bench_train.py", "--projections", "--batch", "2", "--repeats", "1", "--json"))
    assert [r["timed"] for r in out["results"]] == ["whole step, dense model", "projections, dense",
                                                    "projections, 8 groups"]
    bad = run_cli("scripts/bench_train.py", "--only", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "allowed" in bad.stderr


def test_bench_train_modes_and_devices():
    out = last_json(run_cli("scripts/bench_train.py", "--only", "flgc8", "--modes", "eager,inductor", "--batch", "2",
                            "--repeats", "1", "--json"))
    assert [r["variant"] for r in out["results"]] == ["flgc8 eager", "flgc8 inductor"]
    bad = run_cli("scripts/bench_train.py", "--modes", "graphs")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "graphs on CUDA only" in bad.stderr
    if not torch.cuda.is_available():
        bad = run_cli("scripts/bench_train.py", "--device", "cuda")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no CUDA device" in bad.stderr
