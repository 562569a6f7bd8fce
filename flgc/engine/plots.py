"""Pictures of learned group structures: masks re-ordered by group, and group sizes."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..method.layer import FLGConv2d  # noqa: E402

PER_ROW = 3


def group_figure(model, title=None):
    """A figure with, for every FLGC layer, its connection mask with filters and input channels
    sorted by group (block diagonal) and bars of its group sizes."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, FLGConv2d)]
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
