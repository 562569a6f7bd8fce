"""The manifest of released checkpoints (checkpoints/manifest.json): its entries, how they are read,
checked and written, and how an entry (and a results row) describes the run behind it.

checkpoints/manifest.json = {"checkpoints": [entry, ...]}; an entry holds name, file, sha256 and bytes
(required), config, model, groups, where, accuracy, accuracy_first_1000, accuracy_flip,
accuracy_flip_first_1000, test_images, mflops, params, empty_input_groups, empty_filter_groups,
moved_from_start (FLGC models only), trained_accuracy, data, recipe, epochs, epochs_changed, minutes,
median_epoch_s, hardware, commit, note (optional) and url (optional: where flgc.records.downloads fetches
the file). Every key but the required ones may be missing (entries written before it existed).

The figures (all measured on the released file with the training preprocessing; flgc.records.releases
makes them): `accuracy` is top-1 in % over every test image of the recipe (`test_images`), single crop;
`accuracy_first_1000` the same over test images 0-999 (data.test_subset=1000: the images whose pixels
are exact in the re-encoded copy); `accuracy_flip` and `accuracy_flip_first_1000` the same two with
flip test-time augmentation (mean softmax of the image and its mirror: another protocol, never shown
as `accuracy`). The first-1000 keys are left out where the recipe's test split holds no more than 1000
images. `moved_from_start` = {inputs, moved_inputs, filters, moved_filters}: the input channels and
filters of the FLGC layers, and how many of them are in another group than in the seeded initial model
of the config (where training started; a budget regularizer's projection before the first step counts
as moved; scripts/assignment_changes.py --from-start shows them per layer). `minutes` is the sum of
the run's wall-clock epoch times (a paused or shared machine inflates it); `median_epoch_s` the median
epoch's seconds, what an epoch takes alone while most epochs ran alone.
"""
import hashlib
import json
import os

from ..engine.optim import peak_lr
from ..errors import UsageError
from ..fileio import atomic_path

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


PRECISION_WORDS = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


def precision_words(train_cfg, amp=None):
    """The precision a run trained in, for its recipe line: `amp` is what train.amp resolved to (metrics.jsonl
    `amp`: none, bf16 or fp16), or a list of (resolved amp, first epoch), one pair each time it changed (a run
    resumed on another kind of CPU); None: the config's train.amp (nothing for auto, which it does not name)."""
    changes = [(amp, 1)] if isinstance(amp, str) else (amp or [(train_cfg.amp, 1)])
    named = [(PRECISION_WORDS[a], first) for a, first in changes if a in PRECISION_WORDS]
    return [word + (f" from epoch {first}" if len(named) > 1 and first > 1 else "") for word, first in named]


def recipe_of(cfg, amp=None):
    """The training recipe of `cfg` in one line: optimizer, peak lr, batch, schedule, extras (precision_words of
    `amp`), train images."""
    t = cfg.train
    if t.schedule == "multistep":
        schedule = f"x{t.lr_gamma:g} at {'/'.join(str(m) for m in t.milestones)}"
    else:
        schedule = f"{t.schedule} after a {t.warmup_epochs:g}-epoch warm-up" if t.warmup_epochs else t.schedule
    extras = [weight_decay_of(t)] + ([f"label smoothing {t.label_smoothing:g}"] if t.label_smoothing else [])
    extras += precision_words(t, amp)
    images = f"{cfg.data.train_subset:,}" if cfg.data.train_subset else "50,000"
    optimizer = "SGD nesterov" if t.nesterov else "SGD"
    return f"{optimizer} {peak_lr(t):g}, batch {t.batch_size}, {schedule}, {', '.join(extras)}; {images} train images"


def structure(cfg):
    """{model, groups, where} of a Config (groups and where are None for the dense network)."""
    f = cfg.flgc
    dense = f.pointwise == "dense"
    return {"model": MODEL_NAMES.get(f.pointwise, f.pointwise), "groups": None if dense else f.groups,
            "where": None if dense else f.where}


OFFICIAL_DATA = "CIFAR-10 (md5 verified)"  # how data_label begins for the official files


def data_label(data_cfg, images):
    """The test data of an evaluation in words, as entries and results rows name it."""
    source = OFFICIAL_DATA if data_cfg.verify_checksums else "CIFAR-10 copy (re-encoded, md5 not verified)"
    jpeg = "" if data_cfg.test_jpeg_quality is None else f", JPEG-encoded at quality {data_cfg.test_jpeg_quality}"
    return f"{source}, {images:,} test images{jpeg}"
