"""The entry points on tiny data written in the CIFAR-10 layout, in this process through each script's main;
one smoke test runs the real command line."""
import json
import os
import shutil

import pytest
import torch
from helpers import ROOT, assert_usage_error, run_captured, run_cli

from flgc.engine import checkpoint, training
from flgc.engine.provenance import cpu_computes_bf16

TINY = ["train.batch_size=16", "train.eval_batch_size=20", "data.verify_checksums=false",
        "train.progress=false", "threads=2"]


def config_path(name):
    return os.path.join(ROOT, "configs", f"{name}.yaml")


def moved_since_seeded_start(path):
    """(input channels, filters) of the checkpoint's FLGC layers in another group than in the model its
    config's seed builds, as scripts/assignment_changes.py --from-start and a release count them."""
    model, cfg, _ = checkpoint.load_model(str(path))
    total = training.moved_totals(training.moved_from_start(model, cfg))
    return total["moved_inputs"], total["moved_filters"]


def train(config, out_dir, data, *extra):
    return run_captured("train.py", "--config", config_path(config), f"out_dir={out_dir}",
                   f"data.root={data}", *TINY, *extra)


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
    assert row["amp"] == ("bf16" if cpu_computes_bf16() else "none")  # what train.amp=auto resolved to here
    assert "epoch 1/1" in result.stdout and "reassigned:" in result.stdout


def test_resume_continues_and_refuses_to_overwrite(flgc_run, tmp_path):
    out, _, data = flgc_run
    copy = tmp_path / "flgc8"
    shutil.copytree(out, copy)
    again = train("mbv2_flgc8", copy, data, "train.epochs=2")
    assert_usage_error(again, "already holds a run", "--resume auto")
    resumed = train("mbv2_flgc8", copy, data, "train.epochs=2", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 2/2" in resumed.stdout
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # the from-start count of the resumed epoch compares with the seeded initial structure
    moved = moved_since_seeded_start(copy / "last.pt")
    assert (rows[1]["moved_inputs"], rows[1]["moved_filters"]) == moved and sum(moved) > 0, (rows[1], moved)
    assert rows[1]["eval_split"] == "test"
    state = torch.load(copy / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["train"]["epochs"] == 2


def test_eval_json_is_the_whole_stdout(flgc_run, call):
    out, _, data = flgc_run
    result = call("eval.py", "--checkpoint", out / "last.pt", f"data.root={data}", "data.verify_checksums=false", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"accuracy", "loss", "mflops", "params", "images"}
    assert report["images"] == 40 and 0 <= report["accuracy"] <= 100
    assert "top-1" in result.stderr and "top-1" not in result.stdout
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(row["test_accuracy"])
    assert report["mflops"] == pytest.approx(row["mflops"])
    plain = call("eval.py", "--checkpoint", out / "last.pt", f"data.root={data}", "data.verify_checksums=false")
    assert "top-1" in plain.stdout
    lossy = call("eval.py", "--checkpoint", out / "last.pt", f"data.root={data}", "data.verify_checksums=false",
                 "data.test_jpeg_quality=50", "--json")
    assert json.loads(lossy.stdout)["jpeg_quality"] == 50 and "40 test images JPEG-encoded at quality 50" in lossy.stderr


def test_count_flops_json_is_the_whole_stdout(flgc_run, call):
    out, _, _ = flgc_run
    result = call("count_flops.py", "--checkpoint", out / "last.pt", "--per-layer", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baseline_mflops"] == pytest.approx(94.992906)
    assert report["ratio"] == pytest.approx(report["baseline_mflops"] / report["mflops"])
    assert "features.17.conv.6" in result.stderr and "flgc" in result.stderr
    config_result = call("count_flops.py", "--config", config_path("mbv2_sgc8"), "--json")
    assert round(json.loads(config_result.stdout)["mflops"], 2) == 62.62


def test_compare_prints_the_configs_and_their_ratios(call):
    result = call("count_flops.py", "--compare")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.strip().splitlines()[1:]}
    shown = [os.path.relpath(p, ROOT) for p in sorted(os.listdir(os.path.join(ROOT, "configs")))]
    assert len(lines) >= len([n for n in shown if n.endswith(".yaml")])
    assert lines["configs/mbv2_baseline.yaml"][0] == "94.99" and lines["configs/mbv2_baseline.yaml"][2] == "1.00"
    assert lines["configs/mbv2_sgc8.yaml"][0] == "62.62" and lines["configs/mbv2_sgc8.yaml"][2] == "1.52"
    assert lines["configs/mbv2_flgc8.yaml"][2] == "1.52"
    if os.path.isdir(os.path.join(ROOT, "configs", "fast")):
        assert any(name.startswith("configs/fast/") for name in lines)


def test_compare_json_with_configs_and_a_checkpoint(flgc_run, call):
    out, _, _ = flgc_run
    result = call("count_flops.py", "--compare", config_path("mbv2_baseline"), out / "last.pt", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert rows[0]["config"] == config_path("mbv2_baseline") and rows[1]["name"] == str(out / "last.pt")
    assert rows[0]["mflops"] == pytest.approx(94.992906) and rows[0]["params"] == 2_295_834 and rows[0]["ratio"] == 1.0
    single = json.loads(call("count_flops.py", "--checkpoint", out / "last.pt", "--json").stdout)
    assert rows[1]["mflops"] == single["mflops"] and rows[1]["ratio"] == pytest.approx(94.992906 / single["mflops"])
    assert "x dense" in result.stderr


@pytest.mark.parametrize("args, fragments", [
    (["count_flops.py", "--config", "configs/missing.yaml"], ["does not exist"]),
    (["count_flops.py", "--config", config_path("mbv2_flgc8"), "train.epoch=1"], ["unknown config key", "valid keys"]),
    (["count_flops.py", "--config", config_path("mbv2_flgc8"), "train.epochs=x"], ["must be an integer"]),
    (["count_flops.py", "--config", config_path("mbv2_flgc8"), "flgc.groups=0"], ["flgc.groups must be >= 1"]),
    (["count_flops.py", "--config", config_path("mbv2_flgc8"), "flgc.groups=17"], ["exceeds the channels"]),
    (["count_flops.py", "--config", config_path("mbv2_sgc8"), "flgc.groups=7"], ["G to divide the channels"]),
    (["count_flops.py", "--compare", "configs/missing.yaml"], ["configs/missing.yaml", "does not exist"]),
    (["count_flops.py", "--compare", "--per-layer"], ["--compare takes neither"]),
    (["count_flops.py", "--compare", config_path("mbv2_sgc8"), "flgc.groups=4"], ["--compare takes neither"]),
    (["eval.py", "--checkpoint", "nowhere.pt"], ["does not exist"]),
    (["eval.py", "--checkpoint", ROOT], ["is a directory"]),
    (["count_flops.py"], ["one of the arguments"]),
    (["scripts/assignment_changes.py", ROOT], ["metrics.jsonl does not exist"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments, call):
    assert_usage_error(call(*args), *fragments)


@pytest.mark.parametrize("override, fragment", [
    ("train.lr=-1", "train.lr must be > 0"), ("train.momentum=-1", "train.momentum must be in [0, 1)"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
])
def test_bad_recipe_values_write_nothing(override, fragment, call, tiny_data, tmp_path):
    result = call("train.py", "--config", config_path("mbv2_baseline"), f"out_dir={tmp_path / 'r'}",
                  f"data.root={tiny_data}", *TINY, override)
    assert_usage_error(result, fragment)
    assert not (tmp_path / "r").exists()


def test_an_empty_config_file_is_refused(call, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = call("train.py", "--config", empty, f"out_dir={tmp_path / 'r'}")
    assert_usage_error(result, "empty.yaml is empty")
    assert not (tmp_path / "r").exists()
    assert_usage_error(call("count_flops.py", "--config", empty), "is empty")


def test_overrides_with_a_checkpoint_are_refused(flgc_run, call):
    out, _, _ = flgc_run
    result = call("count_flops.py", "--checkpoint", out / "last.pt", "flgc.groups=4")
    assert_usage_error(result, "overrides apply only with --config", "flgc.groups=4")


def test_bad_checkpoints(tmp_path, flgc_run, call):
    out, _, _ = flgc_run
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((out / "last.pt").read_bytes()[:5000])
    assert_usage_error(call("eval.py", "--checkpoint", corrupt), "cannot be loaded", "truncated or damaged")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(5000).replace(b"\x80", b"\x81").replace(b"PK", b"QK"))
    assert_usage_error(call("eval.py", "--checkpoint", noise), "not a PyTorch checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert_usage_error(call("eval.py", "--checkpoint", foreign), "not an flgc checkpoint")


def test_resume_from_another_architecture_names_the_key(tmp_path, flgc_run, call):
    out, _, data = flgc_run
    target = tmp_path / "baseline"
    result = call("train.py", "--config", config_path("mbv2_baseline"), f"out_dir={target}", f"data.root={data}",
                  *TINY, "train.epochs=1", "--resume", out / "last.pt")
    assert_usage_error(result, "does not fit this model's architecture", "features.1.conv.3.input_group_logits [32, 8]")
    assert not target.exists()


def test_a_released_file_cannot_be_resumed_and_out_dir_must_be_a_directory(tmp_path, flgc_run, call):
    out, _, data = flgc_run
    slim = tmp_path / "slim.pt"
    checkpoint.save_slim(str(slim), checkpoint.load(str(out / "last.pt")))
    result = call("train.py", "--config", config_path("mbv2_flgc8"), f"out_dir={tmp_path / 'r'}", f"data.root={data}",
                  *TINY, "train.epochs=2", "--resume", slim)
    assert_usage_error(result, "holds weights only", "resume a run's last.pt")
    assert not (tmp_path / "r").exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    result = call("train.py", "--config", config_path("mbv2_flgc8"), f"out_dir={a_file}", f"data.root={data}", *TINY)
    assert_usage_error(result, "is a file; the run directory must be a directory")
    assert a_file.read_text() == "kept"


def test_fewer_classes_than_cifar10_is_refused(tmp_path, tiny_data, call):
    result = call("train.py", "--config", config_path("mbv2_baseline"), f"out_dir={tmp_path / 'r'}",
                  f"data.root={tiny_data}", *TINY, "model.num_classes=5")
    assert_usage_error(result, "model.num_classes=5 is below CIFAR-10's 10 classes")
    assert not (tmp_path / "r").exists()


def test_missing_data_without_download(tmp_path, call):
    result = call("train.py", "--config", config_path("mbv2_baseline"), f"out_dir={tmp_path / 'r'}",
                  f"data.root={tmp_path}", "data.download=false")
    assert_usage_error(result, "CIFAR-10 not found", "cifar-10-batches-py")
    assert not (tmp_path / "r").exists()


def test_checksum_mismatch_names_the_switch(tiny_data, tmp_path, call):
    result = call("train.py", "--config", config_path("mbv2_baseline"), f"out_dir={tmp_path / 'r'}",
                  f"data.root={tiny_data}")
    assert_usage_error(result, "md5", "data.verify_checksums=false")


def test_a_truncated_batch_file_is_named(flgc_run, tmp_path, call):
    out, _, data = flgc_run
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    batch = copy / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:2000])
    result = call("eval.py", "--checkpoint", out / "last.pt", f"data.root={copy}", "data.verify_checksums=false")
    assert_usage_error(result, "cannot parse CIFAR-10 file", "test_batch", "truncated")


def test_assignment_changes_and_plot_groups(flgc_run, call, tmp_path):
    out, _, _ = flgc_run
    result = call("scripts/assignment_changes.py", out, "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(table) == 17 and len(logged) == 1
    assert table == {name: [cells] for name, cells in logged[0]["reassign_per_layer"].items()}
    assert "total" in result.stderr
    figure = tmp_path / "figs" / "groups.png"
    assert call("scripts/plot_groups.py", out / "last.pt", "--out", figure).returncode == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(figure.parent) == ["groups.png"]
    assert_usage_error(call("scripts/plot_groups.py", out / "last.pt", "--out", tmp_path / "g.gif"), "allowed file types")


@pytest.mark.slow  # two whole processes (about 8 s); the tests above call the same entry points in this process
def test_command_line_smoke(flgc_run):
    """The real command line of eval.py and count_flops.py: exit codes and streams as a shell sees them."""
    out, _, data = flgc_run
    good = run_cli("count_flops.py", "--checkpoint", str(out / "last.pt"), "--json")
    assert good.returncode == 0 and set(json.loads(good.stdout)) >= {"mflops", "params", "ratio"}
    assert_usage_error(run_cli("eval.py", "--checkpoint", str(out / "nowhere.pt"), "--json"), "does not exist")


def fake_run(path, epochs, times, accuracies):
    """A run directory as train.py leaves it, without training: config.yaml and one row per epoch done."""
    from flgc.engine import config
    path.mkdir(parents=True)
    cfg = config.load("configs/mbv2_flgc8.yaml", config.parse_overrides([f"train.epochs={epochs}"]))
    (path / "config.yaml").write_text(config.dump(cfg))
    rows = [{"epoch": e, "epoch_time_s": t, "test_accuracy": a} for e, (t, a) in enumerate(zip(times, accuracies), 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_status_reports_each_run_of_a_folder_with_the_time_left(call, tmp_path):
    fake_run(tmp_path / "recipe" / "mbv2_sgc8", 4, [100.0, 300.0, 200.0], [None, 50.0, None])
    fake_run(tmp_path / "recipe" / "mbv2_baseline", 2, [60.0, 60.0], [40.0, 45.5])
    (tmp_path / "recipe" / "empty").mkdir()
    fake_run(tmp_path / "recipe" / "mbv2_torn", 2, [60.0], [None])
    with open(tmp_path / "recipe" / "mbv2_torn" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "epo')  # a row half written
    result = call("scripts/run_status.py", str(tmp_path / "recipe"))
    assert result.returncode == 0, result.stderr
    baseline, sgc8, torn = result.stdout.strip().splitlines()
    assert "mbv2_torn: cannot be read (" in torn and "line 2 is not JSON" in torn
    assert "mbv2_baseline: complete, test 45.50% (epoch 2), median epoch 60 s" in baseline and "left" not in baseline
    assert "mbv2_sgc8: 3/4 epochs, test 50.00% (epoch 2), median epoch 200 s, 0.2 h trained" in sgc8
    figures = json.loads(call("scripts/run_status.py", str(tmp_path / "recipe" / "mbv2_sgc8"), "--json").stdout)
    assert figures[0]["hours_left"] == 200.0 / 3600 and figures[0]["minutes"] == 10.0
    assert_usage_error(call("scripts/run_status.py", str(tmp_path / "recipe" / "empty")), "nor holds one")
