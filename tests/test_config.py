import os
import re

import pytest

from flgc.engine import config
from flgc.errors import UsageError


def test_file_and_overrides():
    cfg = config.load("configs/mbv2_flgc8.yaml",
                      config.parse_overrides(["train.epochs=2", "flgc.groups=4", "data.verify_checksums=false",
                                              "flgc.regularizer.weight=0", "train.milestones=[1, 2]"]))
    assert cfg.train.epochs == 2 and cfg.flgc.groups == 4 and cfg.data.verify_checksums is False
    assert cfg.flgc.regularizer.weight == 0.0 and isinstance(cfg.flgc.regularizer.weight, float)
    assert cfg.train.milestones == [1, 2]
    assert cfg.out_dir == "runs/mbv2_flgc8"
    assert cfg.flgc.pointwise == "flgc" and cfg.train.lr == 0.1 and cfg.train.weight_decay == 4e-5


def test_the_default_run_directory_keeps_the_recipe_folder(tmp_path):
    assert config.load("configs/cpu/mbv2_flgc8.yaml").out_dir == os.path.join("runs", "cpu", "mbv2_flgc8")
    assert config.load("configs/cpu-long/mbv2_flgc8.yaml").out_dir == os.path.join("runs", "cpu-long", "mbv2_flgc8")
    (tmp_path / "mine.yaml").write_text("seed: 1\n")
    assert config.load(str(tmp_path / "mine.yaml")).out_dir == os.path.join("runs", "mine")


def test_round_trip_through_dict():
    cfg = config.load("configs/mbv2_sgc8.yaml")
    assert config.from_dict(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'; valid keys: out_dir, seed"),
    ("nonsense=1", "unknown config key"),
    ("train.epochs=two", "must be an integer"),
    ("train.epochs=0", "must be >= 1"),
    ("data.download=maybe", "true or false"),
    ("flgc.pointwise=sparse", "allowed: dense, group, flgc"),
    ("flgc.groups=0", "must be >= 1"),
    ("flgc.regularizer.kind=l1", "allowed: balance, budget, none"),
    ("train.epochs", "expected KEY=VALUE"),
    ("train.lr=-1", "train.lr must be > 0, got -1"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.lr=.nan", "train.lr must be > 0"),
    ("train.momentum=-1", "train.momentum must be in [0, 1), got -1"),
    ("train.momentum=1", "train.momentum must be in"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1"),
    ("flgc.logit_weight_decay=-0.5", "flgc.logit_weight_decay must be >= 0"),
    ("flgc.regularizer.weight=-1", "flgc.regularizer.weight must be >= 0"),
    ("train.lr_gamma=0", "train.lr_gamma must be > 0"),
    ("data.test_jpeg_quality=0", "data.test_jpeg_quality must be in 1-95 (JPEG quality), got 0"),
    ("data.test_jpeg_quality=96", "data.test_jpeg_quality must be in 1-95"),
    ("model.num_classes=0", "model.num_classes must be >= 1, got 0"),
    ("train.weight_decay=5e-x", "train.weight_decay must be a float, got '5e-x'"),
])
def test_bad_values_are_usage_errors(override, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        config.load("configs/mbv2_flgc8.yaml", config.parse_overrides([override]))


def test_missing_file():
    with pytest.raises(UsageError, match="does not exist"):
        config.load("configs/nope.yaml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match="is empty"):
        config.load(str(path))


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(UsageError, match="train.nesterov=true needs train.momentum > 0"):
        config.load("configs/cpu/mbv2_flgc8.yaml", config.parse_overrides(["train.momentum=0"]))
    cfg = config.load("configs/cpu/mbv2_flgc8.yaml", config.parse_overrides(["train.momentum=0", "train.nesterov=false"]))
    assert cfg.train.momentum == 0.0 and not cfg.train.nesterov


def test_exponent_floats_that_yaml_reads_as_strings_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 5e-4 as the string '5e-4'; a float key takes it as the number."""
    path = tmp_path / "wd.yaml"
    path.write_text("train:\n  weight_decay: 5e-4\n  lr: 1E-1\n")
    cfg = config.load(str(path), config.parse_overrides(["flgc.logit_weight_decay=2e-5"]))
    assert (cfg.train.weight_decay, cfg.train.lr, cfg.flgc.logit_weight_decay) == (5e-4, 0.1, 2e-5)
    with pytest.raises(UsageError, match="must be an integer"):
        config.load(str(path), config.parse_overrides(["train.epochs=1e2"]))


def test_a_binary_file_as_config_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(UsageError, match="is not text"):
        config.load(str(path))


def test_zero_weight_decay_and_momentum_are_allowed():
    cfg = config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(["train.weight_decay=0", "train.momentum=0"]))
    assert cfg.train.weight_decay == 0.0 and cfg.train.momentum == 0.0
