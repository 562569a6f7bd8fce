"""The checkpoint format: one dict, written atomically, read with torch.load(weights_only=True).

Keys: format_version, config (the resolved config as plain data), model (state_dict), and for
training checkpoints optimizer, scheduler, epoch, best_accuracy, rng (torch CPU generator state);
deployed checkpoints add deploy_spec (plain data describing the inference modules, see flgc.deploy).
A checkpoint thus rebuilds its own model: eval.py needs nothing else.
"""
import os
import tempfile

import torch

from . import config as config_lib
from .builders import build_model
from .errors import UsageError

FORMAT_VERSION = 1


def save(path, payload):
    """Write `payload` (a dict) to `path` via a temp file and rename: a kill never leaves half a file."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def load(path):
    """The checkpoint dict at `path`; anything unreadable, unsafe or foreign raises UsageError."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds pickled code or objects, which are refused for safety"
        raise UsageError(f"checkpoint {path} cannot be loaded: {reason}") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise UsageError(f"{path} is not an flgc checkpoint (no format_version); "
                         f"convert reference checkpoints with scripts/convert_reference_checkpoint.py")
    if payload["format_version"] != FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} has format version {payload['format_version']}; "
                         f"this code reads version {FORMAT_VERSION}")
    for key in ("config", "model"):
        if key not in payload:
            raise UsageError(f"checkpoint {path} is incomplete: no {key!r} entry")
    return payload


def config_of(payload, overrides=()):
    return config_lib.from_dict(payload["config"], overrides)


def load_weights(model, state_dict, path):
    """load_state_dict, strict; a mismatch (another architecture) raises UsageError."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UsageError(f"checkpoint {path} does not fit this model's architecture ({first})") from None


def model_from(payload, path, cfg=None):
    """The network stored in a checkpoint (training or deployed form), weights loaded, on CPU."""
    cfg = cfg or config_of(payload)
    model = build_model(cfg)
    if payload.get("deploy_spec") is not None:
        from .deploy import rebuild
        try:
            model = rebuild(model, payload["deploy_spec"])
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise UsageError(f"checkpoint {path} holds a deployed model this code cannot rebuild ({err})") from None
        model.deploy_spec = payload["deploy_spec"]
    load_weights(model, payload["model"], path)
    return model


def deployed_payload(model, cfg_dict, **extra):
    """Checkpoint dict of a converted (deployed) model."""
    return {"config": cfg_dict, "model": model.state_dict(), "deploy_spec": model.deploy_spec, **extra}
