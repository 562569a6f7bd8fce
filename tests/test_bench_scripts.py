"""The benchmark scripts run end to end at toy sizes and keep their JSON contract."""
import json

import pytest
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


@pytest.mark.slow
def test_bench_inference_resnet50_variants_and_rows():
    out = last_json(run_cli("scripts/bench_inference.py", "--model", "resnet50", "--size", "32", "--batch-sizes", "1",
                            "--repeats", "1", "--json"))
    assert out["model"] == "resnet50" and out["size"] == 32
    rows = {(r["variant"], r["runtime"]): r for r in out["results"]}
    variants = ["dense", "sgc8", "flgc8-masked", "flgc8-deployed", "flgc8-bound"]
    assert set(rows) == {(v, r) for v in variants for r in ("torch", "onnxruntime")}
    assert all(r["batch"] == 1 and r["ms"] > 0 for r in rows.values())
    # MACs: sgc8 and the bound compute the uniform-group 1x1s; the deployed form no more than dense
    assert rows[("sgc8", "torch")]["mflops"] == pytest.approx(rows[("flgc8-bound", "torch")]["mflops"])
    assert rows[("flgc8-deployed", "torch")]["mflops"] <= rows[("dense", "torch")]["mflops"]


def test_bench_inference_refuses_what_it_cannot_run():
    result = run_cli("scripts/bench_inference.py", "--model", "resnet50", "--per-layer", "--device",
                     "cuda" if not torch.cuda.is_available() else "cpu")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    if not torch.cuda.is_available():
        cuda = run_cli("scripts/bench_inference.py", "--device", "cuda")
        assert cuda.returncode == 2 and cuda.stderr.count("\n") == 1 and "no CUDA device" in cuda.stderr
