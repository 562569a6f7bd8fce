"""Figures: pictures of learned group structures (masks re-ordered by group, group sizes), and writing
any figure to a file. matplotlib (the plot extra) is imported only when a figure is made."""
import math
import os

from ..errors import UsageError
from ..extras import require
from ..fileio import atomic_path
from ..method.layer import flgc_layers

FIGURE_TYPES = (".png", ".pdf", ".svg")
PER_ROW = 3


def pyplot():
    """matplotlib.pyplot, drawing to files only (the Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_figure_path(path, option, purpose=None):
    """UsageError unless `path` names a figure file (FIGURE_TYPES) and matplotlib is installed; `option`
    (e.g. --plot) is named in the message, `purpose` (default: the option) says what needs matplotlib."""
    if os.path.splitext(path)[1].lower() not in FIGURE_TYPES:
        raise UsageError(f"{option} {path}: allowed file types are {', '.join(FIGURE_TYPES)}")
    require("matplotlib", purpose or option)


def save_figure(figure, path):
    """Write `figure` to `path` (its type from the file name) via a temp file and rename: a failure
    leaves no half-written image."""
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=110, format=os.path.splitext(path)[1][1:].lower())


def group_figure(model, title=None):
    """A figure with, for every FLGC layer, its connection mask with filters and input channels
    sorted by group (block diagonal) and bars of its group sizes."""
    import numpy as np
    plt = pyplot()
    layers = flgc_layers(model)
    rows = max(1, math.ceil(len(layers) / PER_ROW))
    figure, axes = plt.subplots(rows, 2 * PER_ROW, figsize=(5.2 * PER_ROW, 2.6 * rows),
                                gridspec_kw={"width_ratios": [1.4, 1] * PER_ROW}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, (name, layer) in enumerate(layers):
        mask_ax, bar_ax = axes[index // PER_ROW, 2 * (index % PER_ROW)], axes[index // PER_ROW, 2 * (index % PER_ROW) + 1]
        inputs, filters = layer.input_groups().cpu(), layer.output_groups().cpu()
        mask = layer.hard_mask().cpu()[filters.argsort(stable=True)][:, inputs.argsort(stable=True)]
        mask_ax.axis("on")
        mask_ax.imshow(mask.numpy(), cmap="Greys", aspect="auto", interpolation="nearest")
        mask_ax.set_title(f"{name} ({layer.in_channels}->{layer.out_channels})", fontsize=7)
        mask_ax.set_xlabel("input channels", fontsize=6)
        mask_ax.set_ylabel("filters", fontsize=6)
        mask_ax.tick_params(labelsize=5)
        in_sizes, out_sizes = (s.cpu().numpy() for s in layer.group_sizes())
        positions = np.arange(layer.groups)
        bar_ax.axis("on")
        bar_ax.bar(positions - 0.2, in_sizes, 0.4, label="inputs")
        bar_ax.bar(positions + 0.2, out_sizes, 0.4, label="filters")
        bar_ax.axhline(layer.in_channels / layer.groups, color="C0", lw=0.6, ls="--")
        bar_ax.axhline(layer.out_channels / layer.groups, color="C1", lw=0.6, ls="--")
        bar_ax.set_xticks(positions)
        bar_ax.tick_params(labelsize=5)
        bar_ax.set_title("group sizes", fontsize=7)
        if index == 0:
            bar_ax.legend(fontsize=5)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
