import os
import pickle
import re
import stat

import pytest
import torch

from flgc.engine import checkpoint, config
from flgc.errors import UsageError
from flgc.fileio import atomic_path
from flgc.models import build_model


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format_version": 1, "config": {}, "model": Exploit(marker)}, f)
    with pytest.raises(UsageError, match="refused for safety"):
        checkpoint.load(str(path))
    assert not marker.exists()
    torch.save({"format_version": 1, "config": {}, "model": {}, "hook": os.getcwd}, tmp_path / "callable.pt")
    with pytest.raises(UsageError, match="refused for safety"):
        checkpoint.load(str(tmp_path / "callable.pt"))


def test_save_is_atomic_and_round_trips(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(str(path), {"config": {}, "model": {"w": torch.ones(3)}, "epoch": 1})
    assert checkpoint.load(str(path))["epoch"] == 1

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save(str(path), {"config": {}, "model": {}, "epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load(str(path))["epoch"] == 1  # the good file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_format_version_is_checked(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format_version": 99, "config": {}, "model": {}}, path)
    with pytest.raises(UsageError, match="format version 99"):
        checkpoint.load(str(path))


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """A training checkpoint written as format version 1 always was: a plain torch.save of the dict."""
    cfg = config.load("configs/mbv2_flgc8.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("old") / "last.pt"
    torch.save({"format_version": 1, "config": config.to_dict(cfg), "model": model.state_dict(),
                "optimizer": {}, "scheduler": {}, "epoch": 3, "best_accuracy": 12.5,
                "rng": torch.get_rng_state()}, path)
    return path, model


def test_load_model_reads_a_format_1_checkpoint(old_checkpoint):
    path, original = old_checkpoint
    model, cfg, payload = checkpoint.load_model(str(path))
    assert cfg.flgc.pointwise == "flgc" and payload["epoch"] == 3
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), original.eval()(x))
    loaded = checkpoint.load_model(str(path), [("data.root", "/elsewhere")])
    assert loaded.config.data.root == "/elsewhere"


def test_a_mismatch_names_the_first_key_and_both_shapes(old_checkpoint):
    path, _ = old_checkpoint
    with pytest.raises(UsageError, match=re.escape("features.1.conv.3.input_group_logits is [32, 8] in the checkpoint, "
                                                   "[32, 4] in the model")):
        checkpoint.load_model(str(path), [("flgc.groups", 4)])
    with pytest.raises(UsageError, match="the checkpoint's features.1.conv.3.input_group_logits .32, 8. has no place"):
        checkpoint.load_model(str(path), [("flgc.pointwise", "dense")])
    model = build_model(config.load("configs/mbv2_flgc8.yaml"))
    state = dict(model.state_dict())
    del state["classifier.weight"]
    with pytest.raises(UsageError, match=re.escape("classifier.weight [10, 1280] is missing from the checkpoint")):
        checkpoint.load_weights(model, state, "x.pt")


def test_messages_for_files_that_are_not_checkpoints(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(7, 256)) * 20)
    with pytest.raises(UsageError, match="noise.pt cannot be loaded: it is not a PyTorch checkpoint"):
        checkpoint.load(str(noise))
    with pytest.raises(UsageError, match="is a directory"):
        checkpoint.load(str(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        checkpoint.load(str(tmp_path / "absent.pt"))
    whole = tmp_path / "whole.pt"
    checkpoint.save(str(whole), {"config": {}, "model": {"w": torch.ones(1000)}})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:1500])
    with pytest.raises(UsageError, match="cut.pt cannot be loaded: it is truncated or damaged"):
        checkpoint.load(str(cut))


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as temp:
            with open(temp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    with atomic_path(str(target)) as temp:
        with open(temp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    target.chmod(0o640)
    with atomic_path(str(target)) as temp:  # a rewrite keeps the file's permissions (the temp file is 0600)
        with open(temp, "wb") as f:
            f.write(b"newer")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "new.png")) as temp:  # a new file: what the umask gives
            with open(temp, "wb") as f:
                f.write(b"new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == 0o644
