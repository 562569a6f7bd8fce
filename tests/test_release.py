"""Releasing a finished run (flgc.records.releases, scripts/release_checkpoint.py): the file and its manifest entry,
the accuracy eval.py reproduces, and refusals that leave every file as it was."""
import json
import os

import pytest
import torch
import yaml
from helpers import ROOT, assert_usage_error, last_json, run_captured, write_tiny_cifar

from flgc.engine import config, training
from flgc.errors import UsageError
from flgc.records import releases
from flgc.records.releases import load_manifest, sha256_file

RECIPE = {"seed": 0, "data": {"train_subset": 40, "test_subset": 20, "download": False},
          "train": {"epochs": 1, "batch_size": 20, "eval_batch_size": 20, "progress": False, "lr": 0.05},
          "flgc": {"pointwise": "flgc", "groups": 4}}


@pytest.fixture()
def setting(tmp_path):
    """(the config file, its data root, a checkpoints directory with an empty manifest)."""
    root = write_tiny_cifar(str(tmp_path / "data"), per_batch=8, test=20)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "manifest.json").write_text('{"checkpoints": []}')
    return str(path), root, str(directory)


def train(config_path, root, out_dir, *overrides):
    cfg = config.load(config_path, config.parse_overrides([f"data.root={root}", "data.verify_checksums=false",
                                                           f"out_dir={out_dir}", *overrides]))
    training.fit(cfg)
    return out_dir


def do_release(setting, run_dir, name="tiny", **kwargs):
    config_path, _, directory = setting
    return releases.release(run_dir, name, config_path, directory, os.path.join(directory, "manifest.json"),
                           report=lambda line: None, **kwargs)


def snapshot(directory):
    return {name: sha256_file(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def test_a_release_holds_weights_and_config_and_its_entry_what_eval_reproduces(setting, tmp_path):
    config_path, root, directory = setting
    run_dir = train(config_path, root, str(tmp_path / "run"))
    entry = do_release(setting, run_dir, note="nothing else ran")
    path = os.path.join(directory, "tiny.pt")
    assert load_manifest(os.path.join(directory, "manifest.json")) == [entry]
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == os.path.getsize(path)
    assert set(torch.load(path, weights_only=True)) == {"format_version", "config", "model"}
    assert entry["accuracy"] == entry["trained_accuracy"] and entry["test_images"] == 20
    assert entry["model"] == "MobileNetV2-FLGC" and entry["groups"] == 4 and entry["epochs"] == 1
    assert entry["hardware"].startswith(f"{os.cpu_count()} CPU cores") and entry["commit"]
    assert entry["minutes"] >= 0 and "CIFAR-10 copy" in entry["data"] and entry["recipe"].startswith("SGD 0.05")
    assert entry["empty_input_groups"] >= 0 and entry["mflops"] > 0 and entry["note"] == "nothing else ran"
    result = run_captured("eval.py", "--checkpoint", path, f"data.root={root}", "data.verify_checksums=false", "--json")
    assert result.returncode == 0
    evaluated = last_json(result)
    assert evaluated["accuracy"] == entry["accuracy"] and evaluated["mflops"] == entry["mflops"]
    again = do_release(setting, run_dir)  # the same file again: the same entry, without a note this time
    assert again["sha256"] == entry["sha256"] and "note" not in again


def test_another_file_under_a_released_name_is_refused_unless_forced(setting, tmp_path):
    config_path, root, directory = setting
    first = train(config_path, root, str(tmp_path / "a"))
    other_data = write_tiny_cifar(str(tmp_path / "other"), per_batch=8, test=20, seed=1)
    second = train(config_path, other_data, str(tmp_path / "b"))  # the same recipe on other images
    do_release(setting, first)
    before = snapshot(directory)
    with pytest.raises(UsageError, match="already releases tiny"):
        do_release(setting, second)
    assert snapshot(directory) == before  # no temp file left, nothing overwritten
    entry = do_release(setting, second, force=True)
    assert [e["sha256"] for e in load_manifest(os.path.join(directory, "manifest.json"))] == [entry["sha256"]]
    assert sha256_file(os.path.join(directory, "tiny.pt")) == entry["sha256"]


def test_unfinished_runs_and_other_recipes_are_refused_with_nothing_written(setting, tmp_path):
    config_path, root, directory = setting
    run_dir = train(config_path, root, str(tmp_path / "run"))
    payload = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)
    payload["config"]["train"]["epochs"] = 3
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    torch.save(payload, unfinished / "last.pt")
    before = snapshot(directory)
    with pytest.raises(UsageError, match=r"is not finished \(1 of 3 epochs\)"):
        do_release(setting, str(unfinished))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "lr": 0.1}}))
    with pytest.raises(UsageError, match=r"trained with train.lr=0.05 but .* says 0.1"):
        releases.release(run_dir, "tiny", str(other), directory, os.path.join(directory, "manifest.json"))
    with pytest.raises(UsageError, match="release name"):
        do_release(setting, run_dir, name="../x")
    assert snapshot(directory) == before


def test_the_script_refuses_bad_input_in_one_line(setting, tmp_path):
    config_path, root, directory = setting
    result = run_captured("scripts/release_checkpoint.py", str(tmp_path / "nothing"), "--name", "x", "--config",
                          "configs/cpu/mbv2_flgc8.yaml", "--dir", directory)
    assert_usage_error(result, "holds no last.pt")
    result = run_captured("scripts/release_checkpoint.py", str(tmp_path), "--name", "x", "--config", config_path)
    assert_usage_error(result, "is not a file of this repository")


def test_download_names_every_entry_whose_file_does_not_match(setting, tmp_path):
    _, _, directory = setting
    entries = []
    for name in ("good", "bad1", "bad2"):
        (tmp_path / "checkpoints" / f"{name}.pt").write_bytes(name.encode())
        entries.append({"name": name, "file": f"{name}.pt", "sha256": sha256_file(os.path.join(directory, f"{name}.pt")),
                        "bytes": len(name)})
    for entry in entries[1:]:
        entry["sha256"] = "0" * 64
    manifest = os.path.join(directory, "manifest.json")
    with open(manifest, "w") as f:
        json.dump({"checkpoints": entries}, f)
    result = run_captured("scripts/download_checkpoints.py", "--all", "--dir", directory, "--manifest", manifest,
                          "--no-progress")
    assert_usage_error(result, "bad1", "bad2")
    assert "good" in result.stdout and "already verified" in result.stdout


def test_released_checkpoints_of_the_repository_verify():
    manifest = os.path.join(ROOT, "checkpoints", "manifest.json")
    for entry in load_manifest(manifest):
        path = os.path.join(ROOT, "checkpoints", entry["file"])
        assert sha256_file(path) == entry["sha256"] and os.path.getsize(path) == entry["bytes"], entry["name"]
        assert entry["bytes"] <= 12 * 10**6 and os.path.isfile(os.path.join(ROOT, entry["config"]))
