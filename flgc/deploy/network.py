"""deploy_model(): the whole network to its inference form."""
import copy

import torch
import torch.fx as fx

from ..method.layer import FLGConv2d
from .folding import fold_sequences
from .graph import deploy as deploy_graph
from .graph import fold_pairs, trace
from .mobilenet import deploy_blocks
from .modules import from_spec, set_module, spec_of
from .orders import DATAFLOW, apply_ops
from .plan_modules import generic_flgc

STRATEGIES = ("auto", "blocks", "conv", "matmul", "native", "dense")


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


def deploy_model(model, batch_size=1, strategy="auto", channels_last=True, input_size=(3, 32, 32), device="cpu"):
    """Inference form of `model` (a copy, eval mode, fp32, on `device`); model.deploy_spec describes it.

    The per-layer kernel ('auto') is the fastest measured on `device` for this batch size and memory
    layout (channels_last or not); input_size (C, H, W) is one image's shape.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    model = copy.deepcopy(model).cpu().float().eval()
    options = dict(batch_size=batch_size, strategy=strategy, channels_last=channels_last, device=device)
    ops = None
    with torch.no_grad():
        replacements = deploy_blocks(model, input_size, **options)
        if not replacements:
            replacements, traced, ops = deploy_graph(model, input_size, **options) or ({}, None, None)
        for path, module in replacements.items():
            set_module(model, path, module)
        if ops:
            model = _rewired(model, traced)
        replacements.update(fold_sequences(model, skip=set(replacements)))
        replacements.update(_remaining_flgc(model))
    model.deploy_spec = {path: spec_of(module) for path, module in replacements.items()}
    if ops:
        model.deploy_spec[DATAFLOW] = ops
    return model.to(device)


def _rewired(model, graph):
    """model running `graph` (its dataflow with the recorded edits applied) as an fx.GraphModule."""
    rewired = fx.GraphModule(model, graph, class_name=type(model).__name__)
    return rewired.eval()


def rebuild(model, spec):
    """Apply a deploy spec to a freshly built training model (weights empty, loaded after): its module
    replacements, and where deployment edited the dataflow, the same edits on a fresh trace."""
    ops = spec.get(DATAFLOW)
    graph = trace(model) if ops else None
    if ops and graph is None:
        raise ValueError("the deploy spec edits the dataflow, but this model does not trace")
    for path, module_spec in spec.items():
        if path != DATAFLOW:
            set_module(model, path, from_spec(module_spec))
    if ops:
        model = _rewired(model, apply_ops(graph, ops))
    return model.eval()
