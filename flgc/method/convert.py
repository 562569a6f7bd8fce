"""FLGC in any network: replace chosen nn.Conv2d layers of a model with FLGConv2d."""
import torch
import torch.nn as nn

from .layer import FLGConv2d


def pointwise_convs(groups):
    """The default choice: every 1x1 nn.Conv2d with groups == 1 whose input and output channels
    are both multiples of `groups` (so a balanced structure exists)."""
    def select(name, conv):
        return (conv.kernel_size == (1, 1) and conv.groups == 1
                and conv.in_channels % groups == 0 and conv.out_channels % groups == 0)
    return select


def _check(name, conv, groups):
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{name}: only nn.Conv2d with groups=1, padding_mode='zeros' and numeric padding can "
                         f"become FLGConv2d (got groups={conv.groups}, padding={conv.padding!r}, "
                         f"padding_mode={conv.padding_mode!r})")
    if groups > min(conv.in_channels, conv.out_channels):
        raise ValueError(f"{name}: groups={groups} exceeds its channels (in={conv.in_channels}, "
                         f"out={conv.out_channels})")


def flgc_from_conv(conv, groups, **flgc_options):
    """An FLGConv2d with conv's weight, bias, stride, padding and dilation (on conv's device and dtype)."""
    layer = FLGConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, groups=groups, bias=conv.bias is not None, **flgc_options)
    layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer.train(conv.training)


def convert_model(model, groups=8, select=None, **flgc_options):
    """Replace the chosen nn.Conv2d layers of `model` (any nn.Module, changed in place and returned)
    with FLGConv2d layers of `groups` groups that keep their weight, bias and geometry.

    select(name, conv) -> bool picks the layers; default: pointwise_convs(groups), every 1x1 conv
    with groups == 1 whose channels are multiples of G. flgc_options go to FLGConv2d (e.g.
    logit_init_std, temperature). A selected conv that FLGC cannot express raises ValueError.
    The result trains with flgc.group_regularizer and deploys with flgc.deploy.deploy_model.
    """
    select = select or pointwise_convs(groups)
    chosen = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and select(name, m)]
    for name, conv in chosen:
        _check(name, conv, groups)
    for name, conv in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, flgc_from_conv(conv, groups, **flgc_options))
    return model
