"""Making a release of a finished training run (checkpoints/: the file and its manifest entry, whose
keys flgc.records.manifest describes), and filling in the figures an older entry lacks.

release(run_dir, name, config_path, ...) checks that the run is finished, trained with the
repository's config file with the schedule that config describes (a run resumed with another
train.epochs is refused where that changed its lr or temperature schedule), and that the tree
releasing it has no uncommitted changes (its config file and code must be what a commit holds; the
run's own training commits are copied as recorded, '+changes' included). It then writes the slim file
(model weights and that config only), evaluates it with the training preprocessing (a release may
change only where the data are, RELEASE_MAY_CHANGE), counts its MMac, parameters and, for FLGC, the
channels moved from the start, and adds the entry. Nothing is written until every check has passed; a
release over an entry with another sha256 is refused unless forced. remeasure(NAME) fills the missing
figures and counts of an existing entry from its verified file (after checking that it reproduces the
entry's `accuracy`).

File and entry are written as a pair that a kill at any moment leaves consistent: a new file is named
NAME-<first 8 hex digits of its sha256>.pt (as torchvision names its weights), so it never replaces
the file an entry points to. The order is: the new file (atomic rename), then the manifest (atomic
rename), then, for a forced re-release, the file the replaced entry named (when no entry names it any
more). A kill between two steps leaves at most an unreferenced file, never an entry whose sha256
contradicts its file. Re-releasing the file an entry already holds keeps that entry's file name (the
first releases, NAME.pt, keep theirs).
"""
import collections
import os
import re
import tempfile

from ..engine import checkpoint, provenance, runlog
from ..engine import config as config_lib
from ..engine.evaluation import test_metrics
from ..engine.training import moved_from_start, moved_totals
from ..errors import UsageError
from ..fileio import publish
from ..method import flops
from ..method.regularizer import structure_stats
from .manifest import add_entry, data_label, load_manifest, recipe_of, save_manifest, sha256_file, structure, verified

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# what a release's evaluation may set: where the data are, never how they are preprocessed or which test
# images count (a narrower set than engine.config.EVALUATION_MAY_CHANGE)
RELEASE_MAY_CHANGE = ("data.root", "data.download", "data.verify_checksums")
FIRST_IMAGES = 1000  # accuracy_first_1000: test images 0-999 (data.test_subset=1000)
FIGURES = ("accuracy_first_1000", "accuracy_flip", "accuracy_flip_first_1000")  # remeasure fills these in
TOLERANCE = 0.01 + 1e-9  # % points: a re-evaluation reproduces a figure to 0.01


def check_release_overrides(overrides, program="a release"):
    """UsageError for an evaluation override outside RELEASE_MAY_CHANGE."""
    for key, _ in overrides:
        if key not in RELEASE_MAY_CHANGE:
            raise UsageError(f"{program} cannot override {key!r}: a release is evaluated with the preprocessing and "
                             f"test split it was trained with; allowed: {', '.join(RELEASE_MAY_CHANGE)}")
    return list(overrides)


def parse_release_overrides(pairs, program="release_checkpoint.py"):
    """[(key, value)] of KEY=VALUE `pairs` for a release's evaluation (RELEASE_MAY_CHANGE only)."""
    return check_release_overrides(config_lib.parse_overrides(pairs), program)


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


def epochs_changes(payload, rows):
    """The train.epochs changes a run's resumes recorded ({from, to, epoch, step}, see
    flgc.engine.training): the checkpoint's and those of its metrics rows, oldest first."""
    found = []
    for change in list(payload.get("epochs_changes") or []) + [c for r in rows for c in r.get("epochs_changes") or []]:
        if change not in found:
            found.append(change)
    return found


def schedule_spans_epochs(cfg):
    """Why train.epochs shapes what `cfg` trains (its lr or FLGC temperature schedule), or None: a
    multistep schedule (milestones in epochs) with a constant temperature trains the first N epochs of
    a longer run exactly as an N-epoch run (tests/test_faults.py: bit-exact)."""
    if cfg.train.schedule != "multistep":
        return f"its {cfg.train.schedule} lr schedule is spread over train.epochs"
    if cfg.flgc.pointwise == "flgc" and cfg.flgc.temperature_start != cfg.flgc.temperature_end:
        return "its FLGC temperature schedule is spread over train.epochs"
    return None


def check_epochs_changes(run_dir, cfg, changes):
    """UsageError when a resume changed train.epochs and with it the schedule; else None (no change) or
    the changes in words, for the entry's `epochs_changed`."""
    if not changes:
        return None
    words = "; ".join(f"train.epochs {c.get('from')} -> {c.get('to')} on a resume after epoch {c.get('epoch')}"
                      + (f" and step {c['step']} of the next" if c.get("step") else "") for c in changes)
    reason = schedule_spans_epochs(cfg)
    if reason:
        raise UsageError(f"{run_dir} was resumed with another train.epochs ({words}) and {reason}: it did not "
                         f"train with the {cfg.train.epochs}-epoch schedule its recipe describes, so it is not "
                         f"released; train it with train.epochs={cfg.train.epochs} from the start")
    return f"{words} (multistep: the same schedule as a {cfg.train.epochs}-epoch run)"


def tree_commit():
    """The commit of the code releasing (flgc.engine.provenance.source_commit)."""
    return provenance.source_commit()


def check_committed():
    """UsageError when the tree that releases has uncommitted changes: the entry names a config file
    and is measured by code that a commit must hold."""
    commit = tree_commit()
    if commit and commit.endswith("+changes"):
        raise UsageError(f"this tree has uncommitted changes ({commit[:12]}...+changes): commit or stash them "
                         f"before releasing, so that the config and the code that measure the release are a commit's")


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


Provenance = collections.namedtuple("Provenance", "minutes median_epoch_s hardware commit last precisions")


def provenance_of(run_dir, epochs, hardware=None, commit=None):
    """Provenance of a finished run from its metrics.jsonl: minutes of training and the median epoch's
    seconds (runlog.training_time), hardware, commit, the last epoch's row and the precisions it trained in
    ((resolved train.amp, first epoch) each time it changed: a run resumed on another kind of CPU).
    `hardware` and `commit` stand in for epochs whose rows lack them (logs written before runs recorded
    them). A run resumed on other hardware or with other code lists each, in the order they trained, also
    one resumed inside an epoch."""
    rows = {r["epoch"]: r for r in runlog.read_metrics(run_dir) if isinstance(r.get("epoch"), int)}
    missing = [e for e in range(1, epochs + 1) if e not in rows or rows[e].get("epoch_time_s") is None]
    if missing:
        raise UsageError(f"{run_dir}/{runlog.METRICS} has no epoch time for epochs {missing[:5]}; it is not this run's log")
    minutes, median_epoch_s = runlog.training_time([rows[e]["epoch_time_s"] for e in range(1, epochs + 1)])
    found = {"hardware": [], "commit": []}
    for key, given, flag in (("hardware", hardware, "--hardware TEXT"), ("commit", commit, "--commit SHA")):
        for epoch in range(1, epochs + 1):
            for value in (v or given for v in runlog.row_provenance(rows[epoch], key)):
                if not value:
                    raise UsageError(f"{run_dir} did not record its {key} in epoch {epoch}; pass {flag}")
                if value not in found[key]:
                    found[key].append(value)
    precisions = []
    for epoch in range(1, epochs + 1):
        amp = rows[epoch].get("amp")
        if amp and (not precisions or precisions[-1][0] != amp):
            precisions.append((amp, epoch))
    return Provenance(minutes, median_epoch_s, "; ".join(found["hardware"]), ", ".join(found["commit"]), rows[epochs],
                      precisions)


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


def first_images_config(cfg):
    """`cfg` evaluating test images 0-999 only (the accuracy_first_1000 figures)."""
    return config_lib.from_dict(config_lib.to_dict(cfg), [("data.test_subset", FIRST_IMAGES)])


def accuracy_figures(model, cfg):
    """{accuracy, accuracy_first_1000, accuracy_flip, accuracy_flip_first_1000, test_images} of `model` on
    the test split of `cfg` (see the module docstring; the first-1000 keys only where the split holds
    more than FIRST_IMAGES images)."""
    plain = test_metrics(model, cfg)
    figures = {"accuracy": plain["accuracy"]}
    first_cfg = None
    if plain["images"] > FIRST_IMAGES:
        first_cfg = first_images_config(cfg)
        figures["accuracy_first_1000"] = test_metrics(model, first_cfg)["accuracy"]
    figures["accuracy_flip"] = test_metrics(model, cfg, tta="flip")["accuracy"]
    if first_cfg is not None:
        figures["accuracy_flip_first_1000"] = test_metrics(model, first_cfg, tta="flip")["accuracy"]
    figures["test_images"] = plain["images"]
    return figures


def measure(path, data_overrides):
    """{the accuracy figures, test_images, mflops, params, structure counts} of the checkpoint file at `path`."""
    model, cfg, _ = checkpoint.load_model(path, data_overrides)
    mflops, params = flops.count(model)
    stats = structure_stats(model)
    return {**accuracy_figures(model, cfg), "mflops": mflops, "params": params,
            "empty_input_groups": stats["empty_input_groups"], "empty_filter_groups": stats["empty_filter_groups"],
            **moves_of(model, cfg)}


def moves_of(model, cfg):
    """{"moved_from_start": {inputs, moved_inputs, filters, moved_filters}} of an FLGC model (its input
    channels and filters in another group than in the seeded initial model of `cfg`); {} without FLGC layers."""
    table = moved_from_start(model, cfg)
    return {"moved_from_start": moved_totals(table)} if table else {}


def release_file_name(name, sha256):
    """NAME-<first 8 hex digits of the sha256>.pt: a new file never takes the name of the one an entry holds."""
    return f"{name}-{sha256[:8]}.pt"


def _write_pair(temp, entries, entry, replaced, directory, manifest_path, force):
    """Write a release in the order that keeps file and manifest consistent at every point: 1. the file
    `temp` under the entry's name (no entry holds it yet), 2. the manifest, 3. the file of the `replaced`
    entry, when no entry names it any more. Returns (the file's path, the removed file's name or None)."""
    target = os.path.join(directory, entry["file"])
    if not verified(target, entry):
        if os.path.exists(target) and not force:
            raise UsageError(f"{target} exists and is another file; pass --force to write over it")
        publish(temp, target)
    save_manifest(manifest_path, entries)
    stale = replaced["file"] if replaced is not None and replaced["file"] != entry["file"] else None
    if stale and not any(e["file"] == stale for e in entries) and os.path.exists(os.path.join(directory, stale)):
        os.unlink(os.path.join(directory, stale))
    return target, stale


def released_line(entry, target, made, replaced, stale, manifest_path):
    """What release() reports: the file, its figures, the training time and where the entry went."""
    dirty = " (trained from uncommitted changes: its commit says +changes)" if "+changes" in made.commit else ""
    return (f"released {entry['name']}: {target}, {entry['accuracy']:.2f}% on {entry['test_images']:,} test images "
            f"(trained: {entry['trained_accuracy']}), {entry['mflops']:.2f} MMac, {entry['params']:,} params, "
            f"{made.minutes:.1f} min (median epoch {made.median_epoch_s:.0f} s) on {made.hardware}{dirty}; "
            f"{'replaced the' if replaced else 'new'} entry in {manifest_path}" + (f"; removed {stale}" if stale else ""))


def release(run_dir, name, config_path, directory, manifest_path, overrides=(), hardware=None, commit=None,
            force=False, config_label=None, note=None, report=print):
    """Release the finished run in `run_dir` as `name` (module docstring); returns the entry, which names the
    config as `config_label` (default `config_path`) and holds `note`; `overrides`: where the test data are."""
    if not NAME.match(name):
        raise UsageError(f"release name {name!r}: use letters, digits, '_', '.', '-' (e.g. mbv2_flgc8_cpu)")
    overrides = check_release_overrides(overrides)
    payload, cfg = finished_run(run_dir)
    released_cfg = check_trained_with(cfg, config_path)
    made = provenance_of(run_dir, cfg.train.epochs, hardware, commit)
    extended = check_epochs_changes(run_dir, cfg, epochs_changes(payload, runlog.read_metrics(run_dir)))
    check_committed()
    entries = load_manifest(manifest_path)
    old = next((e for e in entries if e["name"] == name), None)
    data = [("data.root", cfg.data.root), ("data.verify_checksums", cfg.data.verify_checksums),
            ("data.download", False), ("threads", cfg.threads)]
    temp, size = write_slim(payload, released_cfg, directory)
    try:
        measured = measure(temp, data + overrides)
        eval_cfg = config_lib.from_dict(config_lib.to_dict(released_cfg), data + overrides)
        sha = sha256_file(temp)
        kept = old is not None and old["sha256"] == sha and verified(os.path.join(directory, old["file"]), old)
        entry = {"name": name, **structure(released_cfg), "config": config_label or config_path,
                 "file": old["file"] if kept else release_file_name(name, sha), "sha256": sha, "bytes": size,
                 **measured, "trained_accuracy": made.last.get("test_accuracy"),
                 "data": data_label(eval_cfg.data, measured["test_images"]),
                 "recipe": recipe_of(released_cfg, made.precisions), "epochs": cfg.train.epochs,
                 "minutes": round(made.minutes, 1), "median_epoch_s": round(made.median_epoch_s, 1),
                 "hardware": made.hardware, "commit": made.commit}
        entry.update({key: value for key, value in (("epochs_changed", extended), ("note", note)) if value})
        entries, replaced = add_entry(entries, entry, force)
        target, stale = _write_pair(temp, entries, entry, old if replaced else None, directory, manifest_path, force)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    report(released_line(entry, target, made, replaced, stale, manifest_path))
    return entry


def _with_figures(entry, figures, moves):
    """`entry` with the FIGURES it lacks taken from `figures`, placed after `accuracy` in FIGURES order, and
    the `moves` keys it lacks after `empty_filter_groups` (where a release puts them)."""
    every = {k: entry[k] if k in entry else figures[k] for k in FIGURES if k in entry or k in figures}
    filled = {}
    for key, value in entry.items():
        if key not in FIGURES:
            filled[key] = value
        if key == "accuracy":
            filled.update(every)
        if key == "empty_filter_groups":
            filled.update({k: v for k, v in moves.items() if k not in entry})
    filled.update({k: v for k, v in {**every, **moves}.items() if k not in filled})
    return filled


def check_reproduces(name, entry, figures, moves):
    """UsageError ("nothing written") unless the re-measured `figures` and `moves` of the release `name`
    agree with what its `entry` holds: the accuracy on as many test images and every figure to 0.01,
    the moved counts exactly."""
    if entry.get("test_images") not in (None, figures["test_images"]) or (
            entry.get("accuracy") is not None and abs(figures["accuracy"] - entry["accuracy"]) > TOLERANCE):
        raise UsageError(f"{name} measures {figures['accuracy']:.2f}% on {figures['test_images']:,} test images here, "
                         f"the manifest says {entry.get('accuracy')}% on {entry.get('test_images')}: other data "
                         f"(data.root, data.verify_checksums) or other code; nothing written")
    for key in FIGURES:
        if key in entry and key in figures and abs(figures[key] - entry[key]) > TOLERANCE:
            raise UsageError(f"{name} measures {key}={figures[key]:.2f} here, the manifest says {entry[key]}; "
                             f"nothing written")
    for key, value in moves.items():
        if key in entry and entry[key] != value:
            raise UsageError(f"{name} counts {key}={value} here, the manifest says {entry[key]}: the seeded "
                             f"initial model differs (other init code or config); nothing written")


def remeasure(name, directory, manifest_path, overrides=(), report=print):
    """Fill the figures (FIGURES, and moved_from_start for an FLGC model) that the entry `name` lacks by
    evaluating its file, verified by sha256 first; the file must reproduce the entry's accuracy on as many
    test images (to 0.01), and what the entry holds already must agree (check_reproduces). Nothing is
    written otherwise. Returns the entry."""
    overrides = check_release_overrides(overrides, "--remeasure")
    entries = load_manifest(manifest_path)
    entry = next((e for e in entries if e["name"] == name), None)
    if entry is None:
        raise UsageError(f"{manifest_path} releases no {name!r}; available: {', '.join(e['name'] for e in entries) or 'none'}")
    path = os.path.join(directory, entry["file"])
    if not verified(path, entry):
        raise UsageError(f"{path} is missing or does not match the sha256 of {name}; fetch it with "
                         f"scripts/download_checkpoints.py {name}")
    model, cfg, _ = checkpoint.load_model(path, [("data.download", False)] + overrides)
    figures, moves = accuracy_figures(model, cfg), moves_of(model, cfg)
    check_reproduces(name, entry, figures, moves)
    missing = [k for k in FIGURES if k in figures and k not in entry]
    new_moves = {k: v for k, v in moves.items() if k not in entry}
    if not missing and not new_moves:
        report(f"{name}: every figure is in the manifest already and reproduces; nothing to fill")
        return entry
    filled = _with_figures(entry, figures, moves)
    entries = [filled if e is entry else e for e in entries]
    save_manifest(manifest_path, entries)
    said = [f"{k}={figures[k]:.2f}" for k in missing] + [f"{k}={v}" for k, v in new_moves.items()]
    report(f"{name}: sha256 verified, {figures['accuracy']:.2f}% reproduced on {figures['test_images']:,} test images; "
           f"filled {', '.join(said)} in {manifest_path}")
    return filled
