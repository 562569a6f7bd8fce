"""Release a finished training run as a checkpoint file and a manifest entry (checkpoints/).

release(run_dir, name, config_path, ...) checks that the run is finished and was trained with the
repository's config file, writes NAME.pt (model weights and that config only), evaluates that file
on the test set, counts its MMac and parameters, and adds one manifest entry with sha256, bytes,
accuracy, MMac, params, recipe, epochs, wall time, hardware, data and the commit that trained it.
Nothing is written until every check has passed; a release over an entry with another sha256 is
refused unless forced.
"""
import os
import re
import tempfile

from ..engine import checkpoint, runlog
from ..engine import config as config_lib
from ..errors import UsageError
from ..fileio import publish
from ..method import flops
from ..method.regularizer import structure_stats
from . import releases
from .results import recipe_of, structure

LIMIT_BYTES = 12 * 10**6
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# a release may be trained with other values of these keys than its config file holds: where the data
# and the run lived, and how fast or verbosely it ran (never the recipe, the model or the epochs)
MAY_DIFFER = ("out_dir", "device", "threads", "train.progress", "train.compile", "train.checkpoint_steps",
              "train.finite_check_steps", "train.eval_interval", "train.eval_batch_size", "data.root",
              "data.download", "data.verify_checksums", "flgc.plot_interval", "flgc.log_per_layer")


def finished_run(run_dir):
    """(last.pt payload, its Config) of a run whose last epoch is done; else UsageError."""
    path = os.path.join(run_dir, "last.pt")
    if not os.path.isfile(path):
        raise UsageError(f"{run_dir} holds no last.pt; give a train.py out_dir")
    payload = checkpoint.load(path)
    cfg = checkpoint.config_of(payload)
    if payload.get("step") or payload.get("epoch") != cfg.train.epochs:
        done = payload.get("epoch")
        raise UsageError(f"{run_dir} is not finished ({done} of {cfg.train.epochs} epochs"
                         f"{', stopped inside the next' if payload.get('step') else ''}); only a finished run "
                         f"is released: continue it with --resume auto")
    return payload, cfg


def check_trained_with(cfg, config_path):
    """The Config of `config_path` (out_dir cleared); UsageError naming the first recipe key the run changed."""
    released = config_lib.load(config_path)
    for key in config_lib.valid_keys():
        ours, theirs = config_lib.get(cfg, key), config_lib.get(released, key)
        if key not in MAY_DIFFER and ours != theirs:
            raise UsageError(f"the run was trained with {key}={ours!r} but {config_path} says {theirs!r}; a release "
                             f"must be trained with its config file (only {', '.join(MAY_DIFFER)} may differ)")
    released.out_dir = None
    return released


def provenance_of(run_dir, epochs, hardware=None, commit=None):
    """(minutes of training, hardware, commit, the last epoch's row) from the run's metrics.jsonl; `hardware` and `commit`
    stand in for epochs whose rows lack them (logs written before runs recorded them). A run resumed
    on other hardware or with other code lists each, in the order they trained."""
    rows = {r["epoch"]: r for r in runlog.read_metrics(run_dir) if isinstance(r.get("epoch"), int)}
    missing = [e for e in range(1, epochs + 1) if e not in rows or rows[e].get("epoch_time_s") is None]
    if missing:
        raise UsageError(f"{run_dir}/{runlog.METRICS} has no epoch time for epochs {missing[:5]}; it is not this run's log")
    minutes = sum(rows[e]["epoch_time_s"] for e in range(1, epochs + 1)) / 60
    found = {"hardware": [], "commit": []}
    for key, given, flag in (("hardware", hardware, "--hardware TEXT"), ("commit", commit, "--commit SHA")):
        for epoch in range(1, epochs + 1):
            value = rows[epoch].get(key) or given
            if not value:
                raise UsageError(f"{run_dir} did not record its {key} in epoch {epoch}; pass {flag}")
            if value not in found[key]:
                found[key].append(value)
    return minutes, "; ".join(found["hardware"]), ", ".join(found["commit"]), rows[epochs]


def data_label(cfg, images):
    source = "CIFAR-10 copy (re-encoded, md5 not verified)" if not cfg.data.verify_checksums else "CIFAR-10 (md5 verified)"
    return f"{source}, {images:,} test images"


def write_slim(payload, released_cfg, directory):
    """A temp file in `directory` holding the model weights and the release config; (path, bytes)."""
    os.makedirs(directory, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-release-", suffix=".pt")
    os.close(handle)
    checkpoint.save(temp, {"config": config_lib.to_dict(released_cfg), "model": payload["model"]})
    size = os.path.getsize(temp)
    if size > LIMIT_BYTES:
        os.unlink(temp)
        raise UsageError(f"the release file would be {size / 1e6:.1f} MB, over the {LIMIT_BYTES / 1e6:.0f} MB limit")
    return temp, size


def measure(path, data_overrides):
    """{accuracy, test_images, mflops, params, structure counts} of the checkpoint file at `path`."""
    from ..engine.evaluation import test_metrics
    model, cfg, _ = checkpoint.load_model(path, data_overrides)
    mflops, params = flops.count(model)
    stats = structure_stats(model)
    test = test_metrics(model, cfg)
    return {"accuracy": test["accuracy"], "test_images": test["images"], "mflops": mflops, "params": params,
            "empty_input_groups": stats["empty_input_groups"], "empty_filter_groups": stats["empty_filter_groups"]}


def release(run_dir, name, config_path, directory, manifest_path, overrides=(), hardware=None, commit=None,
            force=False, config_label=None, note=None, report=print):
    """Release the finished run in `run_dir` as `name` (see the module docstring); returns the entry.
    The entry names the config as `config_label` (default `config_path`), e.g. configs/cpu/NAME.yaml, and
    holds `note` when given (e.g. what else ran on the machine while the run trained)."""
    if not NAME.match(name):
        raise UsageError(f"release name {name!r}: use letters, digits, '_', '.', '-' (e.g. mbv2_flgc8_cpu)")
    payload, cfg = finished_run(run_dir)
    released_cfg = check_trained_with(cfg, config_path)
    minutes, hardware, commit, trained = provenance_of(run_dir, cfg.train.epochs, hardware, commit)
    entries = releases.load_manifest(manifest_path)
    data = [("data.root", cfg.data.root), ("data.verify_checksums", cfg.data.verify_checksums),
            ("data.download", False), ("threads", cfg.threads)]
    temp, size = write_slim(payload, released_cfg, directory)
    try:
        measured = measure(temp, data + list(overrides))
        eval_cfg = config_lib.from_dict(config_lib.to_dict(released_cfg), data + list(overrides))
        entry = {"name": name, **structure(released_cfg), "config": config_label or config_path, "file": f"{name}.pt",
                 "sha256": releases.sha256_file(temp), "bytes": size, **measured, "trained_accuracy": trained.get("test_accuracy"),
                 "data": data_label(eval_cfg, measured["test_images"]), "recipe": recipe_of(released_cfg),
                 "epochs": cfg.train.epochs, "minutes": round(minutes, 1), "hardware": hardware, "commit": commit}
        if note:
            entry["note"] = note
        entries, replaced = releases.add_entry(entries, entry, force)
        target = os.path.join(directory, entry["file"])
        if os.path.exists(target) and not releases.verified(target, entry) and not force and not replaced:
            raise UsageError(f"{target} exists and is another file; pass --force to write over it")
        publish(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    releases.save_manifest(manifest_path, entries)
    report(f"released {name}: {target}, {measured['accuracy']:.2f}% on {measured['test_images']:,} test images "
           f"(trained: {entry['trained_accuracy']}), {measured['mflops']:.2f} MMac, {measured['params']:,} params, "
           f"{minutes:.1f} min on {hardware}; {'replaced the' if replaced else 'new'} entry in {manifest_path}")
    return entry
