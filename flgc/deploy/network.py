"""convert(): the whole network to its inference form."""
import copy

import torch

from ..layer import FLGConv2d
from .folding import fold_sequences
from .graph import deploy as deploy_graph
from .graph import fold_pairs
from .mobilenet import convert_blocks
from .modules import set_module, spec_of
from .pointwise import generic_flgc

STRATEGIES = ("auto", "blocks", "conv", "matmul", "dense")


def _remaining_flgc(model):
    """Every FLGConv2d still in model -> gathers + padded grouped conv, in place; {path: module}."""
    done = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, FLGConv2d):
            done[name] = generic_flgc(module)
            set_module(model, name, done[name])
    return done


def fold_batchnorm(model):
    """A copy of `model` (CPU, fp32, eval) with every BatchNorm folded into the conv before it, FLGC
    layers kept in their training form (masked dense weight)."""
    model = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        replacements = fold_pairs(model)
        for path, module in (replacements or {}).items():
            set_module(model, path, module)
        fold_sequences(model)
    return model


def convert(model, batch_size=1, strategy="auto", channels_last=True, input_size=(3, 32, 32), device="cpu"):
    """Inference form of `model` (a copy, eval mode, fp32, on `device`); model.deploy_spec describes it.

    The per-layer kernel ('auto') is the fastest measured on `device` for this batch size and memory
    layout (channels_last or not); input_size (C, H, W) is one image's shape.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    model = copy.deepcopy(model).cpu().float().eval()
    options = dict(batch_size=batch_size, strategy=strategy, channels_last=channels_last, device=device)
    with torch.no_grad():
        replacements = convert_blocks(model, input_size, **options)
        if not replacements:
            replacements = deploy_graph(model, input_size, **options) or {}
        for path, module in replacements.items():
            set_module(model, path, module)
        replacements.update(fold_sequences(model, skip=set(replacements)))
        replacements.update(_remaining_flgc(model))
    model.deploy_spec = {path: spec_of(module) for path, module in replacements.items()}
    return model.to(device)
