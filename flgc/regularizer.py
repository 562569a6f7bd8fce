"""Penalties on the soft group assignment of FLGConv2d layers, added to the training loss.

With S (in x G) and T (out x G) the row-wise softmax of a layer's logits, the expected group sizes
are c = sum_rows S (input channels) and n = sum_rows T (filters).

balance: mean over layers of  1/G sum_g [ ((c_g - in/G) / (in/G))^2 + ((n_g - out/G) / (out/G))^2 ]
budget:  mean over layers of  G * relu( sum_g c_g n_g / (in * out) - 1/G )
"""
import torch

from .layer import FLGConv2d

KINDS = ("balance", "budget", "none")


def expected_group_sizes(layer):
    """Expected (softmax) input-channel and filter counts per group, each of length G."""
    inputs = torch.softmax(layer.input_group_logits / layer.temperature, dim=1).sum(dim=0)
    filters = torch.softmax(layer.output_group_logits / layer.temperature, dim=1).sum(dim=0)
    return inputs, filters


def balance_penalty(layer):
    inputs, filters = expected_group_sizes(layer)
    g = layer.groups
    in_target, out_target = layer.in_channels / g, layer.out_channels / g
    return (((inputs - in_target) / in_target) ** 2 + ((filters - out_target) / out_target) ** 2).mean()


def budget_penalty(layer):
    inputs, filters = expected_group_sizes(layer)
    fraction = (inputs * filters).sum() / (layer.in_channels * layer.out_channels)
    return layer.groups * torch.relu(fraction - 1.0 / layer.groups)


def group_regularizer(model, kind):
    """Mean penalty of `kind` over the trainable FLGC layers of `model` (a scalar tensor, 0 if none)."""
    if kind not in KINDS:
        raise ValueError(f"unknown regularizer {kind!r}; allowed: {', '.join(KINDS)}")
    layers = [m for m in model.modules() if isinstance(m, FLGConv2d) and not m.frozen]
    if kind == "none" or not layers:
        return torch.zeros(())
    penalty = balance_penalty if kind == "balance" else budget_penalty
    return torch.stack([penalty(layer) for layer in layers]).mean()
