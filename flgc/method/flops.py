"""FLOP counting, in the convention of the FLGC reference results table.

MFLOPS are ptflops (pytorch backend) multiply-accumulates in millions, counted per module with
ptflops's own hooks; an FLGConv2d counts its learned hard structure (sum over groups of
in_g * out_g * kh * kw * H_out * W_out), neither the dense conv nor the mask construction.
Modules defined elsewhere add their own counts with register_flop_hook (flgc.deploy does, on import).
"""
import torch
import torch.nn as nn
from ptflops.pytorch_ops import MODULES_MAPPING
from torch.nn.modules.batchnorm import _BatchNorm

from .layer import FLGConv2d


def _flgc_hook(module, inputs, output):
    module.__flops__ += output.shape[0] * module.macs(output.shape[2], output.shape[3])


def flgc_params(layer):
    """Parameters of the hard structure: in-group weights (and bias); the logits are not counted."""
    kh, kw = layer.kernel_size
    return layer.connections() * kh * kw + (layer.out_channels if layer.bias is not None else 0)


def _flgc_dense_hook(module, inputs, output):
    kh, kw = module.kernel_size
    module.__flops__ += output.numel() * module.in_channels * kh * kw


# module class -> forward hook adding its MACs to module.__flops__; filled by register_flop_hook
_REGISTERED_HOOKS = {}


def register_flop_hook(module_class, hook):
    """Count modules of `module_class` (and its subclasses) with `hook(module, inputs, output)`, which adds
    their MACs for the batch to module.__flops__. For modules ptflops does not know (flgc.deploy's)."""
    _REGISTERED_HOOKS[module_class] = hook


def _hook_for(module, flgc_as_computed):
    """The forward hook that adds `module`'s MACs to module.__flops__, or None for uncounted modules."""
    if isinstance(module, FLGConv2d):
        return _flgc_dense_hook if flgc_as_computed else _flgc_hook
    for module_class, hook in _REGISTERED_HOOKS.items():
        if isinstance(module, module_class):
            return hook
    if isinstance(module, _BatchNorm):  # SyncBatchNorm and other subclasses count as BatchNorm2d
        return MODULES_MAPPING[nn.BatchNorm2d]
    return MODULES_MAPPING.get(type(module))


def module_macs(model, input_size=(3, 32, 32), flgc_as_computed=False):
    """[(name, module, MACs for one image)] for every counted leaf module, in forward order.

    FLGC layers count their hard structure; with flgc_as_computed, the dense conv a masked FLGC
    layer really runs. Modules with a registered hook (register_flop_hook) count as it says.
    """
    counted, handles = [], []
    for name, module in model.named_modules():
        hook = _hook_for(module, flgc_as_computed)
        if hook is not None:
            module.__flops__ = 0
            counted.append((name, module))
            handles.append(module.register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    result = [(name, module, int(module.__flops__)) for name, module in counted]
    for _, module in counted:
        del module.__flops__
    return result


def count_params(model):
    """Trainable parameters, FLGC layers counted by their hard structure (deployable size)."""
    total = 0
    for module in model.modules():
        if isinstance(module, FLGConv2d):
            total += flgc_params(module)
        else:
            total += sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    return total


def count(model, input_size=(3, 32, 32), flgc_as_computed=False):
    """(MMac, parameters) of `model` for one image."""
    macs = sum(m for _, _, m in module_macs(model, input_size, flgc_as_computed))
    return macs / 1e6, count_params(model)


def describe(module):
    """Per-layer facts for the --per-layer table: kind, in, out, groups, group sizes."""
    if isinstance(module, FLGConv2d):
        in_sizes, out_sizes = module.group_sizes()
        sizes = "in " + "/".join(map(str, in_sizes.tolist())) + " out " + "/".join(map(str, out_sizes.tolist()))
        return "flgc", module.in_channels, module.out_channels, module.groups, sizes
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            kind = "conv"
        elif module.groups == module.in_channels == module.out_channels:
            kind = "depthwise"
        else:
            kind = "group"
        g = module.groups
        sizes = "" if g == 1 or kind == "depthwise" else f"in {module.in_channels // g}x{g} out {module.out_channels // g}x{g}"
        return kind, module.in_channels, module.out_channels, g, sizes
    if isinstance(module, nn.Linear):
        return "linear", module.in_features, module.out_features, 1, ""
    return type(module).__name__.lower(), "", "", "", ""
