"""End to end through the command line on tiny data written in the CIFAR-10 layout."""
import json
import os

import pytest
import torch
from helpers import run_cli

TINY = ["train.batch_size=16", "train.eval_batch_size=20", "data.verify_checksums=false",
        "train.progress=false", "threads=2"]


def train(config, out_dir, data, *extra):
    return run_cli("train.py", "--config", f"configs/{config}.yaml", f"out_dir={out_dir}",
                   f"data.root={data}", *TINY, *extra)


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def flgc_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "flgc8"
    first = train("mbv2_flgc8", out, tiny_data, "train.epochs=1")
    assert first.returncode == 0, first.stderr
    return out, first, tiny_data


def test_train_writes_the_run_directory(flgc_run):
    out, result, _ = flgc_run
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("epoch", "train_loss", "test_accuracy", "lr", "mflops", "regularizer",
                "reassign_inputs", "reassign_filters"):
        assert key in row, key
    assert row["epoch"] == 1 and row["lr"] == 0.1 and 50 < row["mflops"] < 75
    assert len(row["reassign_per_layer"]) == 17
    assert row["amp"] in ("none", "bf16")  # what train.amp=auto resolved to on this machine
    assert "epoch 1/1" in result.stdout and "reassigned:" in result.stdout


def test_resume_continues_and_refuses_to_overwrite(flgc_run):
    out, _, data = flgc_run
    again = train("mbv2_flgc8", out, data, "train.epochs=2")
    assert_usage_error(again, "already holds a run", "--resume auto")
    resumed = train("mbv2_flgc8", out, data, "train.epochs=2", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 2/2" in resumed.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["train"]["epochs"] == 2


def test_eval_json(flgc_run):
    out, _, data = flgc_run
    result = run_cli("eval.py", "--checkpoint", str(out / "last.pt"), f"data.root={data}",
                     "data.verify_checksums=false", "--json")
    assert result.returncode == 0, result.stderr
    report = last_json(result.stdout)
    assert set(report) == {"accuracy", "loss", "mflops", "params", "images"}
    assert report["images"] == 40 and 0 <= report["accuracy"] <= 100
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(row["test_accuracy"])
    assert report["mflops"] == pytest.approx(row["mflops"])


def test_count_flops_json_and_per_layer(flgc_run):
    out, _, _ = flgc_run
    result = run_cli("count_flops.py", "--checkpoint", str(out / "last.pt"), "--per-layer", "--json")
    assert result.returncode == 0, result.stderr
    report = last_json(result.stdout)
    assert report["baseline_mflops"] == pytest.approx(94.992906)
    assert report["ratio"] == pytest.approx(report["baseline_mflops"] / report["mflops"])
    assert "features.17.conv.6" in result.stdout and "flgc" in result.stdout
    config_result = run_cli("count_flops.py", "--config", "configs/mbv2_sgc8.yaml", "--json")
    assert round(last_json(config_result.stdout)["mflops"], 2) == 62.62


@pytest.mark.parametrize("args, fragments", [
    (["count_flops.py", "--config", "configs/missing.yaml"], ["does not exist"]),
    (["count_flops.py", "--config", "configs/mbv2_flgc8.yaml", "train.epoch=1"], ["unknown config key", "valid keys"]),
    (["count_flops.py", "--config", "configs/mbv2_flgc8.yaml", "train.epochs=x"], ["must be an integer"]),
    (["count_flops.py", "--config", "configs/mbv2_flgc8.yaml", "flgc.groups=0"], ["flgc.groups must be >= 1"]),
    (["count_flops.py", "--config", "configs/mbv2_flgc8.yaml", "flgc.groups=17"], ["exceeds the channels"]),
    (["count_flops.py", "--config", "configs/mbv2_sgc8.yaml", "flgc.groups=7"], ["G to divide the channels"]),
    (["eval.py", "--checkpoint", "nowhere.pt"], ["does not exist"]),
    (["count_flops.py"], ["one of the arguments"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments):
    assert_usage_error(run_cli(*args), *fragments)


def test_bad_checkpoints(tmp_path, flgc_run, tiny_data):
    out, _, _ = flgc_run
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((out / "last.pt").read_bytes()[:5000])
    assert_usage_error(run_cli("eval.py", "--checkpoint", str(corrupt)), "cannot be loaded")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert_usage_error(run_cli("eval.py", "--checkpoint", str(foreign)), "not an flgc checkpoint")
    # resuming a baseline run from an FLGC checkpoint: another architecture, nothing written
    target = tmp_path / "baseline"
    result = train("mbv2_baseline", target, tiny_data, "train.epochs=1", "--resume", str(out / "last.pt"))
    assert_usage_error(result, "does not fit this model's architecture")
    assert not target.exists()


def test_missing_data_without_download(tmp_path):
    result = run_cli("train.py", "--config", "configs/mbv2_baseline.yaml", f"out_dir={tmp_path / 'r'}",
                     f"data.root={tmp_path}", "data.download=false")
    assert_usage_error(result, "CIFAR-10 not found", "cifar-10-batches-py")
    assert not (tmp_path / "r").exists()


def test_checksum_mismatch_names_the_switch(tiny_data, tmp_path):
    result = run_cli("train.py", "--config", "configs/mbv2_baseline.yaml", f"out_dir={tmp_path / 'r'}",
                     f"data.root={tiny_data}")
    assert_usage_error(result, "md5", "data.verify_checksums=false")
