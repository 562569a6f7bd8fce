"""The paper's CIFAR-10 results table: released checkpoints and local runs next to the published rows.

A row holds the model, G, where the grouped 1x1 convs sit, MMac (ptflops convention, flgc.method.flops) and
its ratio to the dense baseline, parameters, for FLGC the channels in another group than at the seeded
start (flgc.records.manifest: moved_from_start), top-1 accuracy and where that accuracy comes from
(`accuracy_source`: evaluated now on the test set, recorded in the checkpoint during training, taken
from the manifest, or published), the training recipe and epochs, hardware and source.
"""
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from ..engine import checkpoint, runlog
from ..engine import config as config_lib
from ..engine.data import files_present
from ..engine.evaluation import test_metrics
from ..engine.plots import pyplot
from ..errors import UsageError
from ..fileio import atomic_path
from ..method import flops
from ..method.layer import FLGConv2d
from ..models import build_model
from .manifest import PRECISION_WORDS, data_label, load_manifest, recipe_of, structure, verified
from .releases import moves_of


@dataclass
class Row:
    """One line of the table; MMac and params of learned structures are counted on the loaded model."""
    name: str
    model: str
    source: str
    kind: str  # ours | manifest | paper | reference
    groups: Optional[int] = None
    where: Optional[str] = None
    mflops: Optional[float] = None
    ratio: Optional[float] = None
    params: Optional[int] = None
    accuracy: Optional[float] = None
    accuracy_source: Optional[str] = None  # evaluated | recorded | manifest | published
    test_images: Optional[int] = None
    accuracy_first_1000: Optional[float] = None  # releases: test images 0-999 (exact pixels in the re-encoded copy)
    data: Optional[str] = None
    recipe: Optional[str] = None
    epochs: Optional[str] = None
    hardware: Optional[str] = None
    minutes: Optional[float] = None
    median_epoch_s: Optional[float] = None  # what an epoch takes alone (the sum of minutes counts pauses)
    # FLGC: {inputs, moved_inputs, filters, moved_filters} in another group than at the seeded start
    moved_from_start: Optional[dict] = None
    # (FLGC layer name, learned MMac, uniform MMac) of a learned structure, for the plot
    per_layer: List[tuple] = field(default_factory=list, repr=False)

    def to_json(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "per_layer"}


REFERENCE_RECIPE = "SGD 0.1, batch 128, x0.1 at 150/250/350"
PUBLISHED = [
    Row("paper: MobileNetV2", "MobileNetV2", "paper (Wang et al., CVPR 2019)", "paper", mflops=94.9,
        accuracy=94.43, accuracy_source="published", test_images=10000, data="CIFAR-10 test set",
        recipe="not stated", epochs="not stated", hardware="not stated"),
    Row("paper: MobileNetV2-FLGC G=8", "MobileNetV2-FLGC", "paper (Wang et al., CVPR 2019)", "paper", groups=8,
        where="not stated", mflops=76.0, accuracy=93.09, accuracy_source="published", test_images=10000,
        data="CIFAR-10 test set", recipe="not stated", epochs="not stated", hardware="not stated"),
    Row("reference: FLGC8", "MobileNetV2-FLGC", "reference implementation's table", "reference", groups=8,
        where="project", mflops=62.6, accuracy=93.7, accuracy_source="published", test_images=10000,
        data="CIFAR-10 test set", recipe=REFERENCE_RECIPE, epochs="400", hardware="not stated (a GPU)"),
]


def dense_baseline_mflops(cfg, input_size=(3, 32, 32)):
    """MMac of the network `cfg` describes with every 1x1 conv dense: what FLGC or group convs save against."""
    dense = dataclasses.replace(cfg, flgc=dataclasses.replace(cfg.flgc, pointwise="dense"))
    return flops.count(build_model(dense), input_size)[0]


def baseline_mflops(config_path):
    """MMac of the dense network of `config_path` (94.99 for configs/mbv2_baseline.yaml)."""
    return dense_baseline_mflops(config_lib.load(config_path))


def per_layer_macs(model):
    """[(layer name, learned MMac, uniform MMac)] of every FLGC layer; uniform = dense conv / G."""
    learned = {name: macs for name, module, macs in flops.module_macs(model) if isinstance(module, FLGConv2d)}
    return [(name, learned[name] / 1e6, macs / 1e6 / module.groups)
            for name, module, macs in flops.module_macs(model, flgc_as_computed=True)
            if isinstance(module, FLGConv2d)]


def structure_row(name, source, kind, cfg, model):
    """A Row with what the config and the loaded model tell: model, G, where, MMac, params, recipe,
    per-layer MMac and the channels moved from the start."""
    mflops, params = flops.count(model)
    return Row(name, source=source, kind=kind, mflops=mflops, params=params, recipe=recipe_of(cfg),
               per_layer=per_layer_macs(model), moved_from_start=moves_of(model, cfg).get("moved_from_start"),
               **structure(cfg))


def evaluate_row(row, model, cfg):
    """Top-1 accuracy on the test set with flgc.engine.evaluation (as eval.py) when the data are at
    hand; returns whether it evaluated."""
    if not files_present(os.path.expanduser(cfg.data.root)):
        return False
    test = test_metrics(model, cfg)
    row.accuracy, row.test_images, row.accuracy_source = test["accuracy"], test["images"], "evaluated"
    row.data = data_label(cfg.data, test["images"])
    return True


def run_checkpoint(path):
    """The checkpoint a run directory stands for: last.pt (the run as trained), else best.pt (an epoch
    chosen on the test set, labelled so in its row)."""
    for name in ("last.pt", "best.pt"):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise UsageError(f"{path} holds no last.pt or best.pt; give a train.py run directory or a checkpoint file")


BEST_EPOCH = "best epoch, chosen on the test set"


def local_row(path, overrides=(), evaluate=True):
    """The row of a run directory or a checkpoint file."""
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist; give a run directory or a checkpoint file")
    run_dir = path if os.path.isdir(path) else os.path.dirname(path)
    ckpt = run_checkpoint(path) if os.path.isdir(path) else path
    model, cfg, payload = checkpoint.load_model(ckpt, overrides)
    name = os.path.basename(os.path.normpath(path))
    if not os.path.isdir(path):  # runs/NAME/best.pt is named NAME/best.pt
        name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))), name)
    row = structure_row(name, ckpt, "ours", cfg, model)
    has_log = os.path.isfile(os.path.join(run_dir, runlog.METRICS))
    history = runlog.read_metrics(run_dir) if has_log else []
    epoch = payload.get("epoch")
    row.epochs = "?" if epoch is None else (str(epoch) if epoch == cfg.train.epochs else f"{epoch} of {cfg.train.epochs}")
    if os.path.basename(ckpt) == "best.pt":  # a figure selected on the test set
        row.epochs = f"{row.epochs} ({BEST_EPOCH})"
    times = [r["epoch_time_s"] for r in history if r.get("epoch_time_s") is not None and r.get("epoch", 0) <= (epoch or 0)]
    row.minutes, row.median_epoch_s = runlog.training_time(times)
    logged = next((r for r in reversed(history) if r.get("epoch") == epoch), {})
    metrics = payload.get("metrics") or logged
    trained = [r for r in history if isinstance(r.get("epoch"), int) and r["epoch"] <= (epoch or 0)]
    row.hardware = ("; ".join(runlog.trained_by(trained, "hardware"))
                    or f"not recorded (device={cfg.device}, threads={cfg.threads or 'default'})")
    if not (evaluate and evaluate_row(row, model, cfg)):
        recorded = metrics.get("test_accuracy")
        images = cfg.data.test_subset or 10000
        row.accuracy, row.accuracy_source = recorded, None if recorded is None else "recorded"
        row.test_images, row.data = images, data_label(cfg.data, images)
    return row


def manifest_row(entry, directory, overrides=(), evaluate=True):
    """The row of a released checkpoint: counted and evaluated when its verified file is here, the
    manifest's figures otherwise."""
    row = Row(entry["name"], entry.get("model", entry["name"]), f"manifest: {entry['file']}", "manifest",
              groups=entry.get("groups"), where=entry.get("where"), mflops=entry.get("mflops"),
              params=entry.get("params"), accuracy=entry.get("accuracy"), accuracy_source="manifest",
              test_images=entry.get("test_images"), accuracy_first_1000=entry.get("accuracy_first_1000"),
              data=entry.get("data"), recipe=entry.get("recipe"), epochs=_text(entry.get("epochs")),
              hardware=entry.get("hardware"), minutes=entry.get("minutes"),
              median_epoch_s=entry.get("median_epoch_s"), moved_from_start=entry.get("moved_from_start"))
    config_path = os.path.join(os.path.dirname(directory), entry.get("config") or "")
    if entry.get("config") and os.path.isfile(config_path):  # the repository's copy of the release's config
        for key, value in structure(config_lib.load(config_path)).items():
            setattr(row, key, value)
    path = os.path.join(directory, entry["file"])
    if not verified(path, entry):
        print(f"{entry['name']}: {path} is not here (or does not match its sha256): figures from the manifest; "
              f"fetch it with scripts/download_checkpoints.py {entry['name']}", file=sys.stderr)
        return row
    model, cfg, _ = checkpoint.load_model(path, overrides)
    counted = structure_row(entry["name"], row.source, "manifest", cfg, model)
    if row.mflops is not None and abs(counted.mflops - row.mflops) > 0.01:
        print(f"{entry['name']}: counted {counted.mflops:.2f} MMac, manifest says {row.mflops}", file=sys.stderr)
    if row.moved_from_start is not None and counted.moved_from_start != row.moved_from_start:
        print(f"{entry['name']}: counted moved_from_start={counted.moved_from_start}, manifest says "
              f"{row.moved_from_start} (other init code?)", file=sys.stderr)
    row.model, row.groups, row.where = counted.model, counted.groups, counted.where
    row.mflops, row.params, row.per_layer = counted.mflops, counted.params, counted.per_layer
    row.moved_from_start = counted.moved_from_start
    if evaluate:
        evaluate_row(row, model, cfg)
    return row


def _text(value):
    return None if value is None else str(value)


def collect(manifest_path, paths=(), overrides=(), evaluate=True, baseline=None):
    """Published rows, then the manifest's, then those of `paths`; `ratio` = baseline MMac / row MMac."""
    for key, value in overrides:
        if key == "data.root" and not files_present(os.path.expanduser(str(value))):
            raise UsageError(f"data.root={value}: no CIFAR-10 python-version files in {value}/cifar-10-batches-py/")
    local = [local_row(p, overrides, evaluate) for p in paths]  # bad paths fail before anything is said
    entries = load_manifest(manifest_path)
    if not entries:
        print(f"{manifest_path} lists no released checkpoints yet: no released rows in the table", file=sys.stderr)
    directory = os.path.dirname(os.path.abspath(manifest_path))
    rows = [dataclasses.replace(r) for r in PUBLISHED]
    rows += [manifest_row(e, directory, overrides, evaluate) for e in entries] + local
    for row in rows:
        if baseline and row.mflops:
            row.ratio = baseline / row.mflops
    return rows


def _number(value, digits, published):
    if value is None:
        return ""
    return f"{value:g}" if published else f"{value:,.{digits}f}"


COLUMNS = ("model", "G", "where", "MMac", "x dense", "params", "accuracy, %", "accuracy source", "test data",
           "moved from start", "recipe", "epochs", "hardware", "source")


def moved_cell(row):
    """'54/7,136 inputs (0.76%), 2/1,504 filters (0.13%)': the FLGC channels in another group than at the start."""
    m = row.moved_from_start
    if m is None:  # not counted (published rows, a release whose file is not here) or no learned groups
        return "" if "FLGC" in (row.model or "") else "-"
    return (f"{m['moved_inputs']:,}/{m['inputs']:,} inputs ({100 * m['moved_inputs'] / m['inputs']:.2f}%), "
            f"{m['moved_filters']:,}/{m['filters']:,} filters ({100 * m['moved_filters'] / m['filters']:.2f}%)")


def markdown_cells(row):
    published = row.accuracy_source == "published"
    accuracy = _number(row.accuracy, 2, published) or "not evaluated"
    hardware = row.hardware or ""
    if row.minutes is not None:
        hardware += f"; {row.minutes:.1f} min"
    if row.median_epoch_s is not None:
        hardware += f" (median epoch {row.median_epoch_s:.0f} s)"
    return (row.model, "-" if row.groups is None else str(row.groups), row.where or "-",
            _number(row.mflops, 2, row.kind in ("paper", "reference")), "" if row.ratio is None else f"{row.ratio:.2f}",
            "" if row.params is None else f"{row.params:,}", accuracy, row.accuracy_source or "",
            row.data or "", moved_cell(row), row.recipe or "", row.epochs or "", hardware, row.source)


def markdown(rows, baseline):
    """The table as GitHub markdown, with a caption line naming the baseline."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join(":--" if c not in ("MMac", "x dense", "params", "accuracy, %") else "--:" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in markdown_cells(row)) + " |" for row in rows]
    lines.append("")
    lines.append(f"x dense = {baseline:.2f} MMac (dense MobileNetV2, configs/mbv2_baseline.yaml) / the row's MMac.")
    return "\n".join(lines)


HEADLINE = ("model", "G", "MMac", "x dense", "accuracy, %", "images 0-999, %", "recipe", "source")


def brief_recipe(row):
    """The recipe in a few words: '22 epochs, cosine, bf16, 2 CPU cores' (the precision where the recipe
    names it; 'fp32/bf16' for a run that changed precision)."""
    if row.kind == "paper":
        return "not stated"
    recipe, hardware = row.recipe or "", row.hardware or ""
    schedule = next((name for key, name in (("x0.1", "lr steps"), ("cosine", "cosine"), ("onecycle", "one-cycle"))
                     if key in recipe), "")
    words = [part.split()[0] for part in recipe.split(";")[0].split(", ") if part.split()[:1] and
             part.split()[0] in PRECISION_WORDS.values()]
    where = "a GPU" if "GPU" in hardware else hardware.split(",")[0]
    parts = (f"{row.epochs} epochs" if row.epochs else "", schedule, "/".join(words), where)
    return ", ".join(part for part in parts if part)


def headline(rows, baseline):
    """The README's table: published rows and releases in a few columns (the full one: markdown)."""
    lines = ["| " + " | ".join(HEADLINE) + " |",
             "|" + "|".join("--:" if c in ("MMac", "x dense", "accuracy, %", "images 0-999, %") else ":--"
                            for c in HEADLINE) + "|"]
    for row in rows:
        published = row.accuracy_source == "published"
        source = row.name if row.kind in ("manifest", "ours") else row.source
        cells = (row.model, "-" if row.groups is None else str(row.groups),
                 _number(row.mflops, 2, row.kind in ("paper", "reference")),
                 "" if row.ratio is None else f"{row.ratio:.2f}",
                 _number(row.accuracy, 2, published) or "not evaluated",
                 _number(row.accuracy_first_1000, 2, False) or "-", brief_recipe(row), source)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# The pages that carry the table, each between `<!-- MARKER:start -->` and `<!-- MARKER:end -->` lines:
# (path in the repository, marker, wide table?).
PAGES = (("README.md", "results-table", False), (os.path.join("docs", "results.md"), "results-table-wide", True))


def splice(text, marker, table):
    """`text` with what stands between its MARKER:start and MARKER:end comment lines replaced by `table`."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, _, rest = text.partition(start)
    _, found, tail = rest.partition(end)
    if text.count(start) != 1 or text.count(end) != 1 or not found:
        raise UsageError(f"expected one '{start}' line, then one '{end}' line")
    return f"{head}{start}\n{table}\n{end}{tail}"


def page_edits(rows, baseline, root):
    """[(path, new text)] for the PAGES under `root` whose tables differ from those of `rows`; UsageError,
    before anything is written, when a page or its markers are missing."""
    edits = []
    for page, marker, wide in PAGES:
        path = os.path.join(root, page)
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such file; --write-pages rewrites {', '.join(p for p, _, _ in PAGES)}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = splice(text, marker, (markdown if wide else headline)(rows, baseline))
        if new != text:
            edits.append((path, new))
    return edits


def write_pages(edits):
    """Write each (path, text) of page_edits, each file whole or not at all."""
    for path, text in edits:
        with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as f:
            f.write(text)


def to_json(rows, baseline):
    return json.dumps({"baseline_mflops": baseline, "rows": [r.to_json() for r in rows]})


MARKERS = {"ours": "o", "manifest": "D", "paper": "s", "reference": "^"}


def _cost_panel(ax, rows, baseline):
    """Accuracy vs MMac, one labelled marker per row; rows without accuracy sit on the MMac axis."""
    scored = [r for r in rows if r.accuracy is not None and r.mflops is not None]
    floor = min([r.accuracy for r in scored], default=90.0) - 5
    placed = [r for r in rows if r.mflops is not None]
    heights = [r.accuracy if r.accuracy is not None else floor for r in placed]
    for index, (row, y) in enumerate(zip(placed, heights)):
        label = row.name if row.accuracy is not None else f"{row.name} (not evaluated)"
        ax.scatter(row.mflops, y, marker=MARKERS[row.kind] if row.accuracy is not None else "x", s=60,
                   color=f"C{index}", alpha=0.8, label=f"{label}: {row.mflops:.2f} MMac"
                   + ("" if row.accuracy is None else f", {row.accuracy:.2f}%"))
        ax.annotate(label, (row.mflops, y), textcoords="offset points", fontsize=7, color=f"C{index}",
                    xytext=(6, 4 - 10 * _rank_near(index, placed, heights)))
    ax.axvline(baseline, color="grey", ls="--", lw=1)
    ax.annotate(f"dense baseline {baseline:.2f} MMac ", (baseline, 0.99), xycoords=("data", "axes fraction"),
                fontsize=7, color="grey", ha="right", va="top")  # top left of the line, clear of the rows' labels
    ax.set_xlabel("MMac per 32x32 image (ptflops convention)")
    ax.set_ylabel("top-1 accuracy on CIFAR-10 test images, %")
    ax.set_title("accuracy vs cost (markers: o ours, D released, s paper, ^ reference)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)


def _rank_near(index, placed, heights):
    """How many rows near row `index` (within 1 MMac and half a point) sit above it, ties broken by
    order: its label goes that many lines down, so that the labels of a cluster do not overlap."""
    def near(other):
        return (abs(placed[other].mflops - placed[index].mflops) <= 1
                and abs(heights[other] - heights[index]) <= 0.5)
    return sum(1 for other in range(len(placed)) if other != index and near(other)
               and (heights[other], -other) > (heights[index], -index))


def _furthest_from_uniform(rows):
    """The row whose learned FLGC structure differs most from uniform groups (summed per-layer |MMac|
    difference; the first on a tie), or None when no row has a learned structure."""
    learned = [r for r in rows if r.per_layer]
    return max(learned, key=lambda r: sum(abs(m - u) for _, m, u in r.per_layer), default=None)


def _layer_panel(ax, row):
    """Bars: learned and uniform MMac of every FLGC layer of `row`'s structure."""
    import numpy as np
    names = [name for name, _, _ in row.per_layer]
    positions = np.arange(len(names))
    learned = [m for _, m, _ in row.per_layer]
    uniform = [u for _, _, u in row.per_layer]
    ax.bar(positions - 0.2, uniform, 0.4, label=f"uniform G={row.groups} ({sum(uniform):.3f} MMac)", color="C7")
    ax.bar(positions + 0.2, learned, 0.4, label=f"learned ({sum(learned):.3f} MMac)", color="C3")
    ax.set_xticks(positions)
    ax.set_xticklabels([n.replace("features.", "").replace(".conv", "") for n in names], rotation=90, fontsize=6)
    ax.set_xlabel("FLGC layer (block.index)")
    ax.set_ylabel("MMac")
    ax.set_title(f"per-layer MMac of {row.name}: learned vs uniform structure", fontsize=9)
    ax.legend(fontsize=7)


def figure(rows, baseline):
    """Accuracy vs MMac of every row; beside it, per-layer MMac of the learned FLGC structure that is
    furthest from uniform groups."""
    plt = pyplot()
    learned = _furthest_from_uniform(rows)
    fig, axes = plt.subplots(1, 2 if learned else 1, figsize=(15 if learned else 8, 6), squeeze=False)
    _cost_panel(axes[0, 0], rows, baseline)
    if learned:
        _layer_panel(axes[0, 1], learned)
    else:
        fig.text(0.5, 0.01, "no row with a learned FLGC structure: per-layer panel omitted", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
