"""The one typed schema of every configuration key, its default and its type.

A YAML file overrides the defaults; `KEY=VALUE` pairs (dotted names, YAML scalars) override the file.
"""
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, get_args, get_origin, get_type_hints

import yaml

from ..errors import UsageError


@dataclass
class DataConfig:
    root: str = "./data"  # holds or receives cifar-10-batches-py/
    download: bool = True  # fetch through torchvision when the files are missing
    verify_checksums: bool = True  # false accepts re-encoded copies, with a warning
    train_subset: Optional[int] = None  # first N training images; null = all
    test_subset: Optional[int] = None  # first N test images; null = all
    # the test images JPEG-encoded once at this quality (1-95) before evaluation, to measure what a lossy
    # copy of the data costs; null = as stored
    test_jpeg_quality: Optional[int] = None
    # training holds out its last N images and evaluates on them in place of the test split (choosing a
    # setting without the test set); eval.py and releases always read the test split
    validation_images: Optional[int] = None
    mean: List[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    std: List[float] = field(default_factory=lambda: [0.2023, 0.1994, 0.2010])
    crop_padding: int = 4  # random crop 32 from the zero-padded image
    flip: bool = True  # random horizontal flip


@dataclass
class RegularizerConfig:
    kind: str = "balance"  # balance | budget | none (formulas: flgc/method/regularizer.py, docs/learning.md)
    weight: float = 10.0  # the penalties are relative sizes / excesses; docs/learning.md: The group-assignment regularizer
    target_mflops: Optional[float] = None  # budget: whole-model MMac ceiling, e.g. 62.6; overrides the fraction
    target_fraction: Optional[float] = None  # budget: per-layer MAC fraction of the dense layer; null = 1/G


@dataclass
class FLGCConfig:
    pointwise: str = "dense"  # kind of the 1x1 convs: dense | group | flgc
    groups: int = 8  # G, for group and flgc
    where: str = "project"  # which 1x1 convs: project | expand | both
    gradient: str = "straight_through"  # straight_through | reference_masked (ablation)
    # masked: the weights of connections the structure leaves out get no gradient | dense: they train as
    # if present, so a channel that changes group meets trained weights (docs/learning.md)
    weight_gradient: str = "masked"
    init: str = "uniform"  # uniform: a random balanced assignment (the SGC cost) | random: argmax of N(0, std^2)
    logit_init_std: float = 0.1  # assignment logits start as N(0, std^2); the reference uses 1
    logit_lr_scale: float = 1.0  # lr of the logits = train.lr * scale
    logit_weight_decay: float = 0.0
    freeze_epoch: Optional[int] = None  # from this epoch on the assignments are fixed
    frozen_compute: str = "masked"  # after freezing: masked (dense conv, fixed mask) | grouped (gathers)
    temperature_start: float = 1.0  # softmax temperature of the logit gradient, first epoch
    temperature_end: float = 1.0  # ... last epoch; geometric schedule in between
    plot_interval: int = 0  # log group-structure pictures to TensorBoard every N epochs; 0 = never
    log_per_layer: bool = False  # also log reassignments of every FLGC layer to TensorBoard
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)


@dataclass
class ModelConfig:
    name: str = "mobilenetv2_cifar"
    num_classes: int = 10


@dataclass
class TrainConfig:
    epochs: int = 400
    batch_size: int = 128
    lr: float = 0.1  # the peak lr for a batch of base_batch_size
    base_batch_size: Optional[int] = None  # lr scales linearly with batch_size / this; null = lr as given
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    norm_weight_decay: Optional[float] = None  # normalization weights and biases; null = train.weight_decay
    depthwise_weight_decay: Optional[float] = None  # depthwise conv filters; null = train.weight_decay
    schedule: str = "multistep"  # multistep | cosine | onecycle; stepped every optimizer step
    warmup_epochs: float = 0.0  # linear warm-up from 0 to the peak lr (fractions of an epoch allowed)
    milestones: List[int] = field(default_factory=lambda: [150, 250, 350])  # multistep: epochs
    lr_gamma: float = 0.1  # multistep: factor at each milestone
    label_smoothing: float = 0.0
    eval_interval: int = 1  # evaluate every N epochs (and always after the last)
    eval_batch_size: int = 1000  # large static evaluation batches
    channels_last: bool = True  # measured: a CPU step of MobileNetV2 1.5-1.7x faster than NCHW (docs/training-speed.md)
    amp: str = "auto"  # autocast: none | bf16 | fp16 | auto (bf16 on CUDA and on CPUs that compute it natively, else none)
    compile: str = "auto"  # none | inductor | cudagraphs (inductor with CUDA graphs) | auto (none: eager everywhere)
    finite_check_steps: int = 50  # read the device's loss-is-finite flag every N steps (and at each epoch end)
    checkpoint_steps: int = 0  # also save last.pt every N steps inside an epoch; 0 = epoch ends only
    progress: bool = True  # tqdm bar per epoch


@dataclass
class Config:
    out_dir: Optional[str] = None  # run directory; null = runs/<config path below configs/>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch CPU threads; null = torch's default
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flgc: FLGCConfig = field(default_factory=FLGCConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "flgc.pointwise": ("dense", "group", "flgc"),
    "flgc.where": ("project", "expand", "both"),
    "flgc.gradient": ("straight_through", "reference_masked"),
    "flgc.weight_gradient": ("masked", "dense"),
    "flgc.init": ("uniform", "random"),
    "flgc.regularizer.kind": ("balance", "budget", "none"),
    "train.amp": ("none", "bf16", "fp16", "auto"),
    "flgc.frozen_compute": ("masked", "grouped"),
    "train.compile": ("none", "inductor", "cudagraphs", "auto"),
    "train.schedule": ("multistep", "cosine", "onecycle"),
}
POSITIVE = ("flgc.freeze_epoch", "train.epochs", "train.batch_size", "train.eval_interval", "train.eval_batch_size",
            "flgc.groups", "data.train_subset", "data.test_subset", "data.validation_images", "threads",
            "train.base_batch_size", "train.finite_check_steps", "model.num_classes")
POSITIVE_REAL = ("train.lr", "train.lr_gamma", "flgc.temperature_start", "flgc.temperature_end", "flgc.logit_init_std")
NON_NEGATIVE = ("train.weight_decay", "flgc.logit_weight_decay", "flgc.logit_lr_scale", "flgc.regularizer.weight",
                "train.checkpoint_steps", "flgc.plot_interval", "data.crop_padding")
NON_NEGATIVE += ("train.warmup_epochs", "train.norm_weight_decay", "train.depthwise_weight_decay")


# 5e-4 with no dot: YAML 1.1 (PyYAML) reads it as a string, though it is meant as a number
EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


def valid_keys(cls=Config, prefix=""):
    """Every dotted key of the schema, leaves only."""
    keys = []
    hints = get_type_hints(cls)
    for name in _fields(cls):
        if dataclasses.is_dataclass(hints[name]):
            keys += valid_keys(hints[name], prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


def _coerce(key, value, annotation):
    """Check `value` against the schema type of `key`; ints are accepted where floats are."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is type(None) or annotation is type(None):
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin in (list, List):
        if not isinstance(value, list):
            raise UsageError(f"config key {key} must be a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise UsageError(f"config key {key} must be true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"config key {key} must be an integer, got {value!r}")
    if annotation in (float, str) and not isinstance(value, annotation):
        raise UsageError(f"config key {key} must be a {annotation.__name__}, got {value!r}")
    return value


def _apply(obj, key, value):
    """Set dotted `key` of the dataclass tree `obj` to `value`, checking key and type."""
    *path, leaf = key.split(".")
    target = obj
    for part in path:
        sub = getattr(target, part, None) if part in _fields(type(target)) else None
        if not dataclasses.is_dataclass(sub):
            raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
        target = sub
    fields = _fields(type(target))
    hint = get_type_hints(type(target)).get(leaf)
    if leaf not in fields or dataclasses.is_dataclass(hint):
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            for sub_key, sub_value in value.items():
                _apply(obj, f"{key}.{sub_key}", sub_value)
            return
        raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
    setattr(target, leaf, _coerce(key, value, hint))


def _flatten(tree, prefix=""):
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _check_range(cfg, keys, lowest, inclusive, words):
    for key in keys:
        value = get(cfg, key)
        if value is not None and not (value > lowest or (inclusive and value == lowest)):  # NaN fails too
            raise UsageError(f"config key {key} must be {words}, got {value}")


def validate(cfg):
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise UsageError(f"config key {key} is {value!r}; allowed: {', '.join(allowed)}")
    _check_range(cfg, POSITIVE, 1, True, ">= 1")
    _check_range(cfg, POSITIVE_REAL, 0, False, "> 0")
    _check_range(cfg, NON_NEGATIVE, 0, True, ">= 0")
    if not 0 <= cfg.train.momentum < 1:
        raise UsageError(f"config key train.momentum must be in [0, 1), got {cfg.train.momentum}")
    if cfg.train.nesterov and cfg.train.momentum == 0:
        raise UsageError("config key train.nesterov=true needs train.momentum > 0; set train.nesterov=false for plain SGD")
    if not 0 <= cfg.train.label_smoothing < 1:
        raise UsageError(f"config key train.label_smoothing must be in [0, 1), got {cfg.train.label_smoothing}")
    _validate_regularizer(cfg.flgc.regularizer)
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise UsageError("config keys data.mean and data.std must hold 3 values (R, G, B)")
    if any(s <= 0 for s in cfg.data.std):
        raise UsageError(f"config key data.std must hold values > 0, got {cfg.data.std}")
    if cfg.data.test_jpeg_quality is not None and not 1 <= cfg.data.test_jpeg_quality <= 95:
        raise UsageError(f"config key data.test_jpeg_quality must be in 1-95 (JPEG quality), got {cfg.data.test_jpeg_quality}")
    return cfg


def _validate_regularizer(reg):
    if reg.weight < 0:
        raise UsageError(f"config key flgc.regularizer.weight must be >= 0, got {reg.weight}")
    if reg.target_mflops is not None and reg.target_mflops <= 0:
        raise UsageError(f"config key flgc.regularizer.target_mflops must be > 0 (MMac), got {reg.target_mflops}")
    if reg.target_fraction is not None and not 0 < reg.target_fraction <= 1:
        raise UsageError(f"config key flgc.regularizer.target_fraction must be in (0, 1], got {reg.target_fraction}")
    if reg.target_mflops is not None and reg.target_fraction is not None:
        raise UsageError("config keys flgc.regularizer.target_mflops and target_fraction exclude each other; set one")
    if reg.kind != "budget" and (reg.target_mflops is not None or reg.target_fraction is not None):
        raise UsageError(f"flgc.regularizer.target_mflops / target_fraction need flgc.regularizer.kind=budget, "
                         f"got kind={reg.kind}")


# what a run may set differently without changing what it computes: where its files are, how fast and how
# verbosely it runs. A release may be trained with other values of these than its config file holds.
RUN_SETTINGS = ("out_dir", "device", "threads", "train.progress", "train.compile", "train.checkpoint_steps",
                "train.finite_check_steps", "train.eval_interval", "train.eval_batch_size", "data.root", "data.download",
                "data.verify_checksums", "flgc.plot_interval", "flgc.log_per_layer")
# a resumed run may also set train.epochs (to extend the run); any other difference changes the result
RESUME_MAY_CHANGE = RUN_SETTINGS + ("train.epochs",)
# what an evaluation may change in a checkpoint's config: where the data are, which test images count and
# how they are stored (test_subset, test_jpeg_quality), how fast it runs; never the preprocessing
EVALUATION_MAY_CHANGE = ("data.root", "data.download", "data.verify_checksums", "data.test_subset",
                         "data.test_jpeg_quality", "device", "threads", "train.eval_batch_size", "train.channels_last")


def first_difference(cfg, other, may_differ=()):
    """(key, value in cfg, value in other) of the first key, in schema order, whose values differ, leaving out
    the keys of `may_differ`; None when the two Configs agree."""
    for key in valid_keys():
        ours, theirs = get(cfg, key), get(other, key)
        if key not in may_differ and ours != theirs:
            return key, ours, theirs
    return None


def get(cfg, key):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def parse_overrides(pairs):
    """['a.b=1', ...] -> [('a.b', 1), ...], values parsed as YAML scalars."""
    parsed = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"bad override {pair!r}; expected KEY=VALUE, e.g. train.epochs=2")
        try:
            parsed.append((key, yaml.safe_load(text) if text != "" else None))
        except yaml.YAMLError:
            raise UsageError(f"override {pair!r}: the value is not a YAML scalar") from None
    return parsed


def from_dict(tree, overrides=()):
    """A validated Config from a nested dict and (key, value) overrides."""
    cfg = Config()
    if not isinstance(tree, dict):
        raise UsageError("a config file must hold a YAML mapping of keys")
    for key, value in list(_flatten(tree)) + list(overrides):
        _apply(cfg, key, value)
    return validate(cfg)


def load(path, overrides=()):
    """Config from the YAML file `path` plus overrides; out_dir defaults to default_out_dir(path)."""
    if not os.path.isfile(path):
        raise UsageError(f"config file {path} does not exist; configs live in configs/*.yaml")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not text (a checkpoint? give it as --checkpoint or --resume); "
                         f"configs are YAML files, configs/*.yaml") from None
    if tree is None:
        raise UsageError(f"config file {path} is empty; write at least the keys that differ from the "
                         f"defaults (see configs/mbv2_baseline.yaml)")
    cfg = from_dict(tree, overrides)
    if cfg.out_dir is None:
        cfg.out_dir = default_out_dir(path)
    return cfg


def default_out_dir(path):
    """runs/ plus the config's path below its configs/ folder, without .yaml (configs/cpu/mbv2_flgc8.yaml ->
    runs/cpu/mbv2_flgc8), so that recipes sharing a file name never share a run directory; a config outside
    any configs/ folder gives runs/<file name>."""
    folders = os.path.normpath(os.path.abspath(path)).split(os.sep)[:-1]
    below = folders[len(folders) - folders[::-1].index("configs"):] if "configs" in folders else []
    return os.path.join("runs", *below, os.path.splitext(os.path.basename(path))[0])


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def dump(cfg):
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
