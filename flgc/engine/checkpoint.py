"""The checkpoint format: one dict, written atomically, read with torch.load(weights_only=True).

Keys: format_version, config (the resolved config as plain data), model (state_dict), and for
training checkpoints optimizer, scheduler, epoch, best_accuracy, rng (torch CPU generator state), at
an epoch's end its metrics row (`metrics`), inside an epoch `step` and the epoch's partial state
(flgc.engine.training.Run.payload);
deployed checkpoints add deploy_spec (plain data describing the inference modules, see flgc.deploy).
A checkpoint thus rebuilds its own model: `load_model(path)` needs nothing else.

Rebuilding a deployed model is deployment's work: flgc.deploy registers its rebuilder here on import
(register_rebuilder), and loading a checkpoint with a deploy_spec imports flgc.deploy by name.
"""
import importlib
import io
import os
import warnings
from typing import Any, NamedTuple

import torch

from ..errors import UsageError
from ..extras import install_command
from ..fileio import atomic_path
from ..models import build_model
from . import config as config_lib

FORMAT_VERSION = 1
SLIM_LIMIT_BYTES = 12 * 10**6  # MobileNetV2 with FLGC on both 1x1s of every block: 10.0 MB of weights and config
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
PICKLE_HEADERS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))  # legacy torch.save / plain pickle
# payload key -> (the package that registers its rebuilder when imported, the pip extra it needs)
REBUILDER_PACKAGES = {"deploy_spec": ("flgc.deploy", "deploy")}
_rebuilders = {}  # payload key -> rebuild(model, spec), filled by register_rebuilder


class Loaded(NamedTuple):
    """What load_model returns: the network (CPU, weights loaded), its Config, the checkpoint dict."""
    model: torch.nn.Module
    config: Any
    payload: dict


def save(path, payload):
    """Write `payload` (a dict) to `path` via a temp file and rename: a kill never leaves half a file."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as temp, open(temp, "wb") as f:
        torch.save(payload, f)


def save_slim(path, payload, config=None):
    """Write the weights and the config of the checkpoint dict `payload` (or `config`, a config dict, in its
    place) to `path`, nothing else: what a release or a reproduction keeps. Returns the file's bytes; a file
    over SLIM_LIMIT_BYTES is refused (UsageError) before anything is written."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "config": payload["config"] if config is None else config,
                "model": payload["model"]}, buffer)
    size = buffer.tell()
    if size > SLIM_LIMIT_BYTES:
        raise UsageError(f"{path} would be {size / 1e6:.1f} MB, over the {SLIM_LIMIT_BYTES / 1e6:.0f} MB limit of a "
                         f"slim checkpoint")
    with atomic_path(path) as temp, open(temp, "wb") as f:
        f.write(buffer.getbuffer())
    return size


def _unreadable_reason(path, err):
    """Why torch.load refused `path`, in words a user can act on."""
    with open(path, "rb") as f:
        header = f.read(4)
    if not header.startswith(ZIP_MAGIC) and not header.startswith(PICKLE_HEADERS):
        return "it is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
    text = str(err)
    if "weights_only" in text or "Unsupported" in text or "GLOBAL" in text:
        return "it holds pickled code or objects, which are refused for safety"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f"it is truncated or damaged ({lines[0] if lines else type(err).__name__})"


def read(path):
    """torch.load(path, weights_only=True) on CPU; a missing, unreadable or unsafe file raises UsageError."""
    if os.path.isdir(path):
        raise UsageError(f"checkpoint {path} is a directory; pass a .pt file (e.g. {os.path.join(path, 'last.pt')})")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol warnings would add lines to stderr
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"checkpoint {path} cannot be loaded: {_unreadable_reason(path, err)}") from None
    return payload


def load(path):
    """The checkpoint dict at `path`; anything unreadable, unsafe or foreign raises UsageError."""
    payload = read(path)
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise UsageError(f"{path} is not an flgc checkpoint (no format_version); "
                         f"import reference checkpoints with scripts/convert_reference_checkpoint.py")
    if payload["format_version"] != FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} has format version {payload['format_version']}; "
                         f"this code reads version {FORMAT_VERSION}")
    for key in ("config", "model"):
        if key not in payload:
            raise UsageError(f"checkpoint {path} is incomplete: no {key!r} entry")
    return payload


def config_of(payload, overrides=()):
    return config_lib.from_dict(payload["config"], overrides)


def _shape(tensor):
    return list(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__


def first_mismatch(expected, given):
    """The first difference between two state_dicts (model's, checkpoint's) in words, or None."""
    for key, tensor in expected.items():
        if key not in given:
            return f"{key} {_shape(tensor)} is missing from the checkpoint"
        if _shape(given[key]) != _shape(tensor):
            return f"{key} is {_shape(given[key])} in the checkpoint, {_shape(tensor)} in the model"
    for key, tensor in given.items():
        if key not in expected:
            return f"the checkpoint's {key} {_shape(tensor)} has no place in the model"
    return None


def load_weights(model, state_dict, path):
    """load_state_dict, strict; a mismatch (another architecture) raises UsageError naming the first key."""
    problem = first_mismatch(model.state_dict(), state_dict)
    if problem is not None:
        raise UsageError(f"checkpoint {path} does not fit this model's architecture: {problem}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UsageError(f"checkpoint {path} does not fit this model's architecture ({first})") from None


def register_rebuilder(key, rebuild):
    """Checkpoints holding `key` are rebuilt by rebuild(model, payload[key]): the freshly built training
    model (weights not loaded yet) -> the model those weights belong to."""
    _rebuilders[key] = rebuild


def rebuilder(key, path):
    """The rebuild function registered for `key`, importing the package that registers it on first need;
    UsageError (one line, the extra to install) where that package cannot be imported."""
    if key not in _rebuilders:
        package, extra = REBUILDER_PACKAGES[key]
        try:
            importlib.import_module(package)
        except ImportError as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(f"checkpoint {path} holds a deployed model; loading it needs {package} ({reason}): "
                             f"{install_command(extra)}") from None
    return _rebuilders[key]


def model_from(payload, path, cfg=None):
    """The network stored in a checkpoint dict (training or deployed form), weights loaded, on CPU."""
    cfg = cfg or config_of(payload)
    model = build_model(cfg)
    spec = payload.get("deploy_spec")
    if spec is not None:
        rebuild = rebuilder("deploy_spec", path)
        try:
            model = rebuild(model, spec)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise UsageError(f"checkpoint {path} holds a deployed model this code cannot rebuild ({err})") from None
        model.deploy_spec = spec
    load_weights(model, payload["model"], path)
    return model


def load_model(path, overrides=()):
    """Load the checkpoint at `path`: Loaded(model, config, payload); the model is on CPU, in train mode
    (a deployed checkpoint's rebuilt model: in eval mode, as it is meant to run).

    `overrides` ((key, value) pairs, see flgc.engine.config.parse_overrides) change the stored config, e.g. the
    data keys for evaluation; one that changes the architecture makes the weights not fit (UsageError).
    """
    payload = load(path)
    cfg = config_of(payload, overrides)
    return Loaded(model_from(payload, path, cfg), cfg, payload)


def deployed_payload(model, cfg_dict, **extra):
    """Checkpoint dict of a converted (deployed) model."""
    return {"config": cfg_dict, "model": model.state_dict(), "deploy_spec": model.deploy_spec, **extra}
