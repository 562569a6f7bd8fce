"""Released checkpoints (checkpoints/): the manifest, making a release, and verified downloads.

checkpoints/manifest.json = {"checkpoints": [entry, ...]}; an entry holds name, config, file, sha256 and
bytes (required), model, groups, where, accuracy, test_images, mflops, params, empty_input_groups,
empty_filter_groups, trained_accuracy, data, recipe, epochs, minutes, hardware, commit, note (optional)
and url (optional: where download() fetches the file).

release(run_dir, name, config_path, ...) checks that the run is finished and was trained with the
repository's config file, writes NAME.pt (model weights and that config only), evaluates that file on
the test set, counts its MMac and parameters, and adds the entry. Nothing is written until every check
has passed; a release over an entry with another sha256 is refused unless forced.

download(entry, directory) fetches to FILE.part and renames it to FILE only after its size and sha256
match; an interrupted download resumes with an HTTP Range request (or restarts when the server
ignores it).
"""
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.request

from ..engine import checkpoint, runlog
from ..engine import config as config_lib
from ..engine.evaluation import test_metrics
from ..engine.optim import peak_lr
from ..errors import UsageError
from ..fileio import atomic_path, publish
from ..method import flops
from ..method.regularizer import structure_stats

REQUIRED = ("name", "file", "sha256", "bytes")


def load_manifest(path):
    if not os.path.isfile(path):
        raise UsageError(f"manifest {path} does not exist")
    try:
        with open(path) as f:
            entries = json.load(f)["checkpoints"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"manifest {path} is not valid ({err}); expected {{\"checkpoints\": [...]}}") from None
    if not isinstance(entries, list):
        raise UsageError(f"manifest {path} is not valid: \"checkpoints\" must be a list")
    for entry in entries:
        problem = entry_problem(entry)
        if problem:
            name = entry.get("name", "?") if isinstance(entry, dict) else "?"
            raise UsageError(f"manifest {path}: entry {name} {problem}")
    return entries


def entry_problem(entry):
    """What is wrong with one manifest entry, or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not (isinstance(entry["sha256"], str) and len(entry["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in entry["sha256"])):
        return "has a sha256 that is not 64 lowercase hex digits"
    if not isinstance(entry["bytes"], int) or isinstance(entry["bytes"], bool) or entry["bytes"] < 1:
        return "has a size (bytes) that is not a positive integer"
    if os.path.basename(entry["file"]) != entry["file"] or entry["file"] in ("", ".", ".."):
        return f"names file {entry['file']!r}, which is not a plain file name"
    return None


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path, entry):
    return os.path.isfile(path) and os.path.getsize(path) == entry["bytes"] and sha256_file(path) == entry["sha256"]


def save_manifest(path, entries):
    """Write the manifest atomically (indent 1, entries in the given order)."""
    with atomic_path(path) as temp, open(temp, "w") as f:
        json.dump({"checkpoints": entries}, f, indent=1)
        f.write("\n")


def add_entry(entries, entry, force=False):
    """The manifest entries with `entry` added, or replacing the one of its name. Replacing an entry
    whose file has another sha256 is refused (UsageError) unless `force`; returns (entries, replaced)."""
    problem = entry_problem(entry)
    if problem:
        raise UsageError(f"entry {entry.get('name', '?')} {problem}")
    old = next((e for e in entries if e["name"] == entry["name"]), None)
    if old is not None and old["sha256"] != entry["sha256"] and not force:
        raise UsageError(f"the manifest already releases {entry['name']} with sha256 {old['sha256'][:12]}..., "
                         f"this file has {entry['sha256'][:12]}...; pass --force to replace the release")
    clashing = [e["name"] for e in entries if e["file"] == entry["file"] and e["name"] != entry["name"]]
    if clashing:
        raise UsageError(f"file {entry['file']} already belongs to the release {clashing[0]}; choose another name")
    kept = [entry if e["name"] == entry["name"] else e for e in entries]
    return (kept if old is not None else kept + [entry]), old is not None


# --- how an entry (and a results row) describes a run --------------------------------------------
MODEL_NAMES = {"dense": "MobileNetV2", "group": "MobileNetV2-SGC", "flgc": "MobileNetV2-FLGC"}


def weight_decay_of(train_cfg):
    """'wd 0.0005', with the parameter kinds that decay otherwise: 'wd 0.0005 (0 on norms and biases)'."""
    t = train_cfg
    kinds = {"norms and biases": t.norm_weight_decay, "depthwise": t.depthwise_weight_decay}
    other = [f"{value:g} on {kind}" for kind, value in kinds.items() if value is not None and value != t.weight_decay]
    return f"wd {t.weight_decay:g}" + (f" ({', '.join(other)})" if other else "")


def recipe_of(cfg):
    """The training recipe of `cfg` in one line: optimizer, peak lr, batch, schedule, extras, train images."""
    t = cfg.train
    if t.schedule == "multistep":
        schedule = f"x{t.lr_gamma:g} at {'/'.join(str(m) for m in t.milestones)}"
    else:
        schedule = f"{t.schedule} after a {t.warmup_epochs:g}-epoch warm-up" if t.warmup_epochs else t.schedule
    extras = [weight_decay_of(t)] + ([f"label smoothing {t.label_smoothing:g}"] if t.label_smoothing else [])
    extras += [t.amp] if t.amp in ("bf16", "fp16") else []
    images = f"{cfg.data.train_subset:,}" if cfg.data.train_subset else "50,000"
    optimizer = "SGD nesterov" if t.nesterov else "SGD"
    return f"{optimizer} {peak_lr(t):g}, batch {t.batch_size}, {schedule}, {', '.join(extras)}; {images} train images"


def structure(cfg):
    """{model, groups, where} of a Config (groups and where are None for the dense network)."""
    f = cfg.flgc
    dense = f.pointwise == "dense"
    return {"model": MODEL_NAMES.get(f.pointwise, f.pointwise), "groups": None if dense else f.groups,
            "where": None if dense else f.where}


def data_label(data_cfg, images):
    """The test data of an evaluation in words, as entries and results rows name it."""
    source = "CIFAR-10 (md5 verified)" if data_cfg.verify_checksums else "CIFAR-10 copy (re-encoded, md5 not verified)"
    return f"{source}, {images:,} test images"


# --- releasing a run --------------------------------------------------------------------------------
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    difference = config_lib.first_difference(cfg, released, config_lib.RUN_SETTINGS)
    if difference is not None:
        key, ours, theirs = difference
        raise UsageError(f"the run was trained with {key}={ours!r} but {config_path} says {theirs!r}; a release must "
                         f"be trained with its config file (only {', '.join(config_lib.RUN_SETTINGS)} may differ)")
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


def write_slim(payload, released_cfg, directory):
    """A temp file in `directory` holding the slim checkpoint (flgc.engine.checkpoint.save_slim) of `payload`
    with the release config; (path, bytes)."""
    os.makedirs(directory, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-release-", suffix=".pt")
    os.close(handle)
    try:
        return temp, checkpoint.save_slim(temp, payload, config_lib.to_dict(released_cfg))
    except UsageError:
        os.unlink(temp)
        raise


def measure(path, data_overrides):
    """{accuracy, test_images, mflops, params, structure counts} of the checkpoint file at `path`."""
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
    entries = load_manifest(manifest_path)
    data = [("data.root", cfg.data.root), ("data.verify_checksums", cfg.data.verify_checksums),
            ("data.download", False), ("threads", cfg.threads)]
    temp, size = write_slim(payload, released_cfg, directory)
    try:
        measured = measure(temp, data + list(overrides))
        eval_cfg = config_lib.from_dict(config_lib.to_dict(released_cfg), data + list(overrides))
        entry = {"name": name, **structure(released_cfg), "config": config_label or config_path, "file": f"{name}.pt",
                 "sha256": sha256_file(temp), "bytes": size, **measured, "trained_accuracy": trained.get("test_accuracy"),
                 "data": data_label(eval_cfg.data, measured["test_images"]), "recipe": recipe_of(released_cfg),
                 "epochs": cfg.train.epochs, "minutes": round(minutes, 1), "hardware": hardware, "commit": commit}
        if note:
            entry["note"] = note
        entries, replaced = add_entry(entries, entry, force)
        target = os.path.join(directory, entry["file"])
        if os.path.exists(target) and not verified(target, entry) and not force and not replaced:
            raise UsageError(f"{target} exists and is another file; pass --force to write over it")
        publish(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    save_manifest(manifest_path, entries)
    report(f"released {name}: {target}, {measured['accuracy']:.2f}% on {measured['test_images']:,} test images "
           f"(trained: {entry['trained_accuracy']}), {measured['mflops']:.2f} MMac, {measured['params']:,} params, "
           f"{minutes:.1f} min on {hardware}; {'replaced the' if replaced else 'new'} entry in {manifest_path}")
    return entry


# --- downloading a release ---------------------------------------------------------------------------
CHUNK = 1 << 16


def _fetch_once(url, part, progress):
    """Append what the server sends to `part`, resuming from its current size when possible."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        status = getattr(response, "status", None) or response.getcode()
        if have and status != 206:  # the server ignored the range: start over
            have = 0
        if progress is not None:
            progress.reset()
            progress.update(have)
        with open(part, "ab" if have else "wb") as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                if progress is not None:
                    progress.update(len(block))


def download(entry, directory, attempts=5, show_progress=True):
    """Path of the verified file of `entry` in `directory`, downloading it when needed."""
    path = os.path.join(directory, entry["file"])
    if verified(path, entry):
        return path, False
    if not entry.get("url"):
        raise UsageError(f"{entry['name']}: {path} is missing or does not match its sha256, and the "
                         f"manifest gives no url to fetch it from")
    os.makedirs(directory, exist_ok=True)
    part = path + ".part"
    progress = None
    if show_progress:
        from tqdm import tqdm
        progress = tqdm(total=entry["bytes"], unit="B", unit_scale=True, desc=entry["name"], leave=False)
    last_error = None
    try:
        for _ in range(attempts):
            try:
                _fetch_once(entry["url"], part, progress)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                last_error = err  # keep the partial file: the next attempt resumes it
                continue
            size = os.path.getsize(part)
            if size < entry["bytes"]:
                last_error = f"got {size} of {entry['bytes']} bytes"
                continue
            break
    finally:
        if progress is not None:
            progress.close()
    if not os.path.exists(part) or os.path.getsize(part) != entry["bytes"]:
        raise UsageError(f"{entry['name']}: download from {entry['url']} did not complete after {attempts} "
                         f"attempts ({last_error}); run again to resume")
    if sha256_file(part) != entry["sha256"]:
        os.unlink(part)
        raise UsageError(f"{entry['name']}: the downloaded file does not match its sha256 "
                         f"{entry['sha256'][:12]}...; it was deleted")
    publish(part, path)
    return path, True
