"""The whole-model MMac budget: the penalty max(0, (MMac - T) / (T - fixed)) of the learned structure
(MMac as flgc.method.flops counts it, with the straight-through gradient of the FLGC layers' group sizes) and
the projection that moves channels and filters until the structure costs at most T MMac. Kept apart
from flgc.method.regularizer because it measures the network with flgc.method.flops.
"""
import weakref

import torch

from ..errors import UsageError
from .flops import module_macs
from .layer import FLGConv2d, flgc_layers
from .regularizer import apply_move, connections, group_regularizer, lowering_moves

_MAC_WEIGHTS = weakref.WeakKeyDictionary()


def _mac_weights(model):
    """({FLGC layer: kh kw H_out W_out}, MACs of every other counted module) for one 32x32 image;
    measured once per model by one forward pass (flgc.method.flops) and cached."""
    if model not in _MAC_WEIGHTS:
        weights, other = {}, 0
        for _, module, macs in module_macs(model, flgc_as_computed=True):  # FLGC: the dense count
            if isinstance(module, FLGConv2d):
                weights[module] = macs // (module.in_channels * module.out_channels)
            else:
                other += macs
        _MAC_WEIGHTS[model] = (weights, other)
    return _MAC_WEIGHTS[model]


def model_mflops(model):
    """MMac of `model` (the value flgc.method.flops counts) as a tensor, with the straight-through gradient of
    the trainable FLGC layers' group sizes."""
    weights, other = _mac_weights(model)
    if not weights:
        return torch.tensor(other / 1e6)
    return (other + torch.stack([weight * connections(layer) for layer, weight in weights.items()]).sum()) / 1e6


def model_budget_penalty(model, target_mflops):
    """max(0, (MMac - target) / (target - fixed)); the target must exceed the fixed (non-FLGC) MMac."""
    fixed = _mac_weights(model)[1] / 1e6
    if target_mflops <= fixed:
        raise UsageError(f"flgc.regularizer.target_mflops={target_mflops} is at or below the {fixed:.2f} MMac "
                         f"this model spends outside its FLGC layers; allowed: above that")
    return torch.relu((model_mflops(model) - target_mflops) / (target_mflops - fixed))


def check_budget_target(model, target_mflops):
    """UsageError unless target_mflops is above the MMac `model` spends outside its FLGC layers."""
    model_budget_penalty(model, target_mflops)


@torch.no_grad()
def project_to_budget(model, target_mflops):
    """While the hard structure of `model` counts more than `target_mflops` MMac, make the move that
    lowers it most (a single channel or filter move where one lowers sum_g c_g n_g, else a paired
    move) in the trainable FLGC layer with the most MACs per connection that has one; no group is ever
    emptied. Deterministic. Returns the number of input channels and filters moved (a pair is 2);
    stops early when no layer has a lowering move left."""
    check_budget_target(model, target_mflops)
    weights, other = _mac_weights(model)
    layers = sorted((layer for layer in weights if not layer.frozen), key=lambda layer: -weights[layer])
    macs = other + sum(weight * int(connections(layer)) for layer, weight in weights.items())
    moves = 0
    while macs > target_mflops * 1e6:
        for layer in layers:
            move = lowering_moves(*layer.group_sizes())
            if move is not None:
                break
        else:
            return moves
        moves += apply_move(layer, *move[1:])
        macs += weights[layer] * move[0]
    return moves




def regularizer_penalty(model, kind, target_mflops=None, target_fraction=None):
    """group_regularizer, with budget measured against the whole-model target_mflops when given."""
    if kind == "budget" and target_mflops is not None and flgc_layers(model, trainable=True):
        return model_budget_penalty(model, target_mflops)
    return group_regularizer(model, kind, target_fraction)
