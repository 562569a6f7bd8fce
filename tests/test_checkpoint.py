import os
import pickle

import pytest
import torch

from flgc import checkpoint
from flgc.errors import UsageError


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
