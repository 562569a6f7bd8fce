"""Releasing a finished run (flgc.records.releases, scripts/release_checkpoint.py): the file and its manifest entry,
the accuracy eval.py reproduces, the figures a release measures and --remeasure fills in, and refusals that leave
every file as it was."""
import json
import os
import shutil

import pytest
import torch
import yaml
from helpers import ROOT, assert_usage_error, last_json, run_captured, write_tiny_cifar

from flgc.engine import checkpoint, config, evaluation, provenance, runlog, training
from flgc.errors import UsageError
from flgc.method.layer import flgc_layers
from flgc.records import releases
from flgc.records.manifest import load_manifest, sha256_file

RECIPE = {"seed": 0, "data": {"train_subset": 40, "test_subset": 20, "download": False},
          "train": {"epochs": 1, "batch_size": 20, "eval_batch_size": 20, "progress": False, "lr": 0.05},
          "flgc": {"pointwise": "flgc", "groups": 4}}


@pytest.fixture(autouse=True)
def committed_tree(monkeypatch):
    """Release from a clean tree (this work tree may hold uncommitted edits while the tests run)."""
    monkeypatch.setattr(releases, "tree_commit", lambda: "0123456789abcdef0123456789abcdef01234567", raising=False)


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


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """trained_once(seed): the recipe trained once for the module on the tiny images of that seed."""
    base, runs = tmp_path_factory.mktemp("release-runs"), {}
    config_path = base / "recipe.yaml"
    config_path.write_text(yaml.safe_dump(RECIPE))

    def run(seed):
        if seed not in runs:
            root = write_tiny_cifar(str(base / f"data{seed}"), per_batch=8, test=20, seed=seed)
            runs[seed] = train(str(config_path), root, str(base / f"run{seed}"))
        return runs[seed]
    return run


@pytest.fixture
def trained_run(tmp_path, trained_once):
    """trained_run(out, seed=0): tmp_path/out, a copy of the recipe's run on `setting`'s images (seed 0) or on
    other ones (seed 1); each test releases its own copy."""
    def copy(out, seed=0):
        shutil.copytree(trained_once(seed), tmp_path / out)
        return str(tmp_path / out)
    return copy


def do_release(setting, run_dir, name="tiny", **kwargs):
    config_path, _, directory = setting
    return releases.release(run_dir, name, config_path, directory, os.path.join(directory, "manifest.json"),
                           report=lambda line: None, **kwargs)


def snapshot(directory):
    return {name: sha256_file(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def test_a_release_holds_weights_and_config_and_its_entry_what_eval_reproduces(setting, trained_run):
    _, root, directory = setting
    run_dir = trained_run("run")
    entry = do_release(setting, run_dir, note="nothing else ran")
    assert entry["file"] == f"tiny-{entry['sha256'][:8]}.pt"  # the hash in the name: a new file never replaces one
    path = os.path.join(directory, entry["file"])
    assert load_manifest(os.path.join(directory, "manifest.json")) == [entry]
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == os.path.getsize(path)
    assert set(torch.load(path, weights_only=True)) == {"format_version", "config", "model"}
    assert entry["accuracy"] == entry["trained_accuracy"] and entry["test_images"] == 20
    assert entry["model"] == "MobileNetV2-FLGC" and entry["groups"] == 4 and entry["epochs"] == 1
    assert entry["hardware"].startswith(f"{os.cpu_count()} CPU cores") and entry["commit"]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert entry["minutes"] == round(sum(r["epoch_time_s"] for r in rows) / 60, 1)  # the log's epoch times
    assert entry["median_epoch_s"] == round(rows[0]["epoch_time_s"], 1)  # one epoch: its own time
    assert "CIFAR-10 copy" in entry["data"] and entry["recipe"].startswith("SGD 0.05")
    assert entry["recipe"].endswith({"none": "fp32", "bf16": "bf16"}[rows[-1]["amp"]] + "; 40 train images")
    # the structure the training log counted for its last epoch is the released one
    assert (entry["empty_input_groups"], entry["empty_filter_groups"], entry["mflops"]) == (
        rows[-1]["empty_input_groups"], rows[-1]["empty_filter_groups"], rows[-1]["mflops"])
    assert entry["note"] == "nothing else ran"
    assert "accuracy_first_1000" not in entry  # 20 test images: no first 1000 to tell apart
    result = run_captured("eval.py", "--checkpoint", path, f"data.root={root}", "data.verify_checksums=false", "--json")
    assert result.returncode == 0
    evaluated = last_json(result)
    assert evaluated["accuracy"] == entry["accuracy"] and evaluated["mflops"] == entry["mflops"]
    again = do_release(setting, run_dir)  # the same file again: the same entry, without a note this time
    assert again["sha256"] == entry["sha256"] and again["file"] == entry["file"] and "note" not in again
    assert sorted(os.listdir(directory)) == sorted(["manifest.json", entry["file"]])


def test_another_file_under_a_released_name_is_refused_unless_forced(setting, trained_run):
    _, _, directory = setting
    first, second = trained_run("a"), trained_run("b", seed=1)  # the same recipe on other images
    do_release(setting, first)
    before = snapshot(directory)
    with pytest.raises(UsageError, match="already releases tiny"):
        do_release(setting, second)
    assert snapshot(directory) == before  # no temp file left, nothing overwritten
    entry = do_release(setting, second, force=True)
    assert [e["sha256"] for e in load_manifest(os.path.join(directory, "manifest.json"))] == [entry["sha256"]]
    assert sha256_file(os.path.join(directory, entry["file"])) == entry["sha256"]
    assert sorted(os.listdir(directory)) == sorted(["manifest.json", entry["file"]])  # the replaced file went


def test_unfinished_runs_and_other_recipes_are_refused_with_nothing_written(setting, tmp_path, trained_run):
    _, _, directory = setting
    run_dir = trained_run("run")
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
    assert "good" in result.stdout and "present, sha256 verified" in result.stdout


def test_released_checkpoints_of_the_repository_verify():
    manifest = os.path.join(ROOT, "checkpoints", "manifest.json")
    for entry in load_manifest(manifest):
        path = os.path.join(ROOT, "checkpoints", entry["file"])
        assert sha256_file(path) == entry["sha256"] and os.path.getsize(path) == entry["bytes"], entry["name"]
        assert entry["bytes"] <= 12 * 10**6 and os.path.isfile(os.path.join(ROOT, entry["config"]))


def extended_run(setting, tmp_path, schedule):
    """A run of the recipe with `schedule`, trained 1 epoch and resumed to the 2 its config file says; the config file."""
    _, root, _ = setting
    path = tmp_path / f"{schedule}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "epochs": 2, "schedule": schedule}}))
    out_dir = str(tmp_path / schedule)
    train(str(path), root, out_dir, "train.epochs=1")
    cfg = config.load(str(path), config.parse_overrides([f"data.root={root}", "data.verify_checksums=false",
                                                         f"out_dir={out_dir}"]))
    training.fit(cfg, resume="auto")
    return str(path), out_dir


def test_a_run_resumed_with_another_epoch_count_records_it_and_a_cosine_one_is_refused(setting, tmp_path):
    _, _, directory = setting
    config_path, run_dir = extended_run(setting, tmp_path, "cosine")
    change = {"from": 1, "to": 2, "epoch": 1, "step": 0}
    assert torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["epochs_changes"] == [change]
    rows = runlog.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["epochs_changes"] == [change] and "epochs_changes" not in rows[0]
    before = snapshot(directory)
    with pytest.raises(UsageError, match=r"train.epochs 1 -> 2 on a resume after epoch 1\) and its cosine lr schedule "
                                         r"is spread over train.epochs: it did not train with the 2-epoch schedule"):
        releases.release(run_dir, "tiny", config_path, directory, os.path.join(directory, "manifest.json"))
    assert snapshot(directory) == before


def test_a_multistep_run_extended_is_released_with_the_change_described(setting, tmp_path):
    _, _, directory = setting
    config_path, run_dir = extended_run(setting, tmp_path, "multistep")
    entry = releases.release(run_dir, "tiny", config_path, directory, os.path.join(directory, "manifest.json"),
                             report=lambda line: None)
    assert entry["epochs"] == 2 and entry["epochs_changed"].startswith("train.epochs 1 -> 2 on a resume after epoch 1")


def test_cpu_hardware_says_whether_the_cpu_computes_bf16(monkeypatch):
    # CPUs of one model name differ in native bf16, which decides train.amp=auto and a run's speed
    monkeypatch.setattr(provenance, "cpu_model", lambda: "AMD EPYC")
    cores, cpu = os.cpu_count(), torch.device("cpu")
    monkeypatch.setattr(provenance, "cpu_computes_bf16", lambda: False)
    assert provenance.hardware(cpu) == f"{cores} CPU cores, AMD EPYC (no native bf16)"
    monkeypatch.setattr(provenance, "cpu_computes_bf16", lambda: True)
    assert provenance.hardware(cpu, cores + 1) == f"{cores} CPU cores, AMD EPYC (native bf16), {cores + 1} threads"


def test_the_precision_of_every_epoch_is_in_the_provenance(tmp_path):
    rows = [{"epoch": e, "epoch_time_s": 60.0, "hardware": "cpu", "commit": "abc", "amp": amp}
            for e, amp in ((1, "none"), (2, "none"), (3, "bf16"), (4, "bf16"))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert releases.provenance_of(str(tmp_path), 4).precisions == [("none", 1), ("bf16", 3)]
    assert releases.provenance_of(str(tmp_path), 2).precisions == [("none", 1)]


def test_a_kill_between_file_and_manifest_leaves_the_entry_matching_its_file(setting, trained_run, monkeypatch):
    _, _, directory = setting
    first = do_release(setting, trained_run("a"))
    second = trained_run("b", seed=1)

    def killed(*args):
        raise KeyboardInterrupt  # as a kill after the new file was written, before the manifest
    monkeypatch.setattr(releases, "save_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        do_release(setting, second, force=True)
    monkeypatch.undo()
    monkeypatch.setattr(releases, "tree_commit", lambda: "0" * 40, raising=False)
    for entry in load_manifest(os.path.join(directory, "manifest.json")):  # the old entry, its file intact
        assert entry == first and sha256_file(os.path.join(directory, entry["file"])) == entry["sha256"]
    replaced = do_release(setting, second, force=True)  # run again: completes, and the old file goes
    assert sorted(os.listdir(directory)) == sorted(["manifest.json", replaced["file"]])


def test_a_release_evaluates_with_the_training_preprocessing_only(setting, trained_run):
    _, root, directory = setting
    run_dir = trained_run("run")
    before = snapshot(directory)
    for key, value in (("data.mean", [0.5, 0.5, 0.5]), ("data.flip", False), ("data.test_subset", 10), ("threads", 1)):
        with pytest.raises(UsageError, match=f"cannot override '{key}'.* allowed: data.root, data.download"):
            do_release(setting, run_dir, overrides=[(key, value)])
    result = run_captured("scripts/release_checkpoint.py", run_dir, "--name", "x", "--config",
                          "configs/cpu/mbv2_flgc8.yaml", "--dir", directory, "data.std=[1,1,1]")
    assert_usage_error(result, "cannot override 'data.std'")
    assert snapshot(directory) == before
    entry = do_release(setting, run_dir, overrides=[("data.root", root), ("data.verify_checksums", False)])
    assert entry["test_images"] == 20


def test_a_tree_with_uncommitted_changes_does_not_release(setting, trained_run, monkeypatch):
    _, _, directory = setting
    run_dir = trained_run("run")
    monkeypatch.setattr(releases, "tree_commit", lambda: "0123456789ab" + "0" * 28 + "+changes")
    before = snapshot(directory)
    with pytest.raises(UsageError, match="uncommitted changes .* commit or stash them"):
        do_release(setting, run_dir)
    assert snapshot(directory) == before


def test_the_figures_of_a_release_and_remeasure_filling_them_in(setting, trained_run, monkeypatch):
    _, root, directory = setting
    monkeypatch.setattr(releases, "FIRST_IMAGES", 10)  # the 20 test images stand for 10,000: "first 1000" = 0-9
    run_dir = trained_run("run")
    entry = do_release(setting, run_dir)
    path = os.path.join(directory, entry["file"])
    model, cfg, _ = checkpoint.load_model(path, [("data.root", root), ("data.verify_checksums", False)])
    first = config.from_dict(config.to_dict(cfg), [("data.test_subset", 10)])
    expected = {"accuracy": evaluation.test_metrics(model, cfg)["accuracy"],
                "accuracy_first_1000": evaluation.test_metrics(model, first)["accuracy"],
                "accuracy_flip": evaluation.test_metrics(model, cfg, tta="flip")["accuracy"],
                "accuracy_flip_first_1000": evaluation.test_metrics(model, first, tta="flip")["accuracy"]}
    assert {k: entry[k] for k in expected} == expected
    assert list(entry).index("accuracy_flip_first_1000") == list(entry).index("accuracy") + 3
    last = runlog.read_metrics(run_dir)[-1]  # what training counted against the structure it started from
    assert entry["moved_from_start"]["moved_inputs"] == last["moved_inputs"] > 0
    assert entry["moved_from_start"]["moved_filters"] == last["moved_filters"]
    assert entry["moved_from_start"]["inputs"] == sum(m.in_channels for _, m in flgc_layers(model))
    state = torch.get_rng_state()
    training.moved_from_start(model, cfg)  # builds the seeded start without touching the caller's RNG
    assert torch.equal(state, torch.get_rng_state())
    manifest = os.path.join(directory, "manifest.json")
    old = {k: v for k, v in entry.items() if k not in releases.FIGURES + ("moved_from_start",)}  # an older entry
    with open(manifest, "w") as f:
        json.dump({"checkpoints": [dict(entry, moved_from_start=dict(entry["moved_from_start"], moved_inputs=0))]}, f)
    with pytest.raises(UsageError, match="counts moved_from_start=.* the manifest says .* nothing written"):
        releases.remeasure("tiny", directory, manifest, [("data.root", root), ("data.verify_checksums", False)],
                           report=lambda line: None)
    with open(manifest, "w") as f:
        json.dump({"checkpoints": [old]}, f)
    args = ("scripts/release_checkpoint.py", "--remeasure", "tiny", f"data.root={root}", "data.verify_checksums=false",
            "--dir", directory, "--manifest", manifest)
    result = run_captured(*args)
    assert result.returncode == 0, result.stderr
    assert load_manifest(manifest) == [entry] and "filled accuracy_first_1000=" in result.stdout
    assert list(load_manifest(manifest)[0]) == list(entry) and "moved_from_start={'inputs'" in result.stdout
    with open(manifest, "w") as f:
        json.dump({"checkpoints": [dict(old, accuracy=old["accuracy"] + 5)]}, f)
    before = snapshot(directory)
    assert_usage_error(run_captured(*args), "the manifest says", "nothing written")
    assert_usage_error(run_captured(*args[:4], "data.flip=false", *args[5:]), "cannot override 'data.flip'")
    assert_usage_error(run_captured(*args, "--name", "x"), "--remeasure takes a release name")
    assert snapshot(directory) == before
    with open(path, "ab") as f:
        f.write(b"x")
    assert_usage_error(run_captured(*args), "does not match the sha256 of tiny")
    assert load_manifest(manifest)[0]["accuracy"] == old["accuracy"] + 5
