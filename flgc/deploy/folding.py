"""BatchNorm folding and the weights of any convolution as one full (out x in x kh x kw) tensor."""
import copy

import torch
import torch.nn as nn

from ..method.layer import FLGConv2d
from .modules import set_module


def fold_bn(weight, bias, bn):
    """(weight, bias) of a conv followed by `bn` in eval mode: the one BatchNorm fold used everywhere.
    weight: out x ... (any trailing shape), bias: out."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    return weight * scale.view(-1, *[1] * (weight.dim() - 1)), bias * scale + shift


def is_depthwise(conv):
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1)
            and conv.groups == conv.in_channels == conv.out_channels > 1)


def dense_weight(conv):
    """Full (out x in x kh x kw) weight of a conv, zero outside its groups (FLGC: the hard mask);
    a depthwise conv keeps its (channels x 1 x kh x kw) weight."""
    if isinstance(conv, FLGConv2d):
        return conv.weight.detach() * conv.hard_mask()[:, :, None, None]
    w = conv.weight.detach()
    g = conv.groups
    if g == 1 or is_depthwise(conv):
        return w.clone()
    out_g, in_g = conv.out_channels // g, conv.in_channels // g
    full = w.new_zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    for k in range(g):
        full[k * out_g:(k + 1) * out_g, k * in_g:(k + 1) * in_g] = w[k * out_g:(k + 1) * out_g]
    return full


def groups_of(conv):
    """(group per input channel, group per filter, G) of a conv of any kind."""
    if isinstance(conv, FLGConv2d):
        return conv.input_groups().cpu(), conv.output_groups().cpu(), conv.groups
    g = conv.groups
    return (torch.arange(conv.in_channels) // (conv.in_channels // g),
            torch.arange(conv.out_channels) // (conv.out_channels // g), g)


def folded(conv, bn=None):
    """(full weight, bias) of conv followed by bn (either may lack a bias / be None)."""
    weight = dense_weight(conv)
    bias = conv.bias.detach().clone() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return fold_bn(weight, bias, bn) if bn is not None else (weight, bias)


def plain_conv(conv, weight, bias):
    """nn.Conv2d with conv's geometry holding weight, bias (depthwise stays depthwise, else dense)."""
    depthwise = is_depthwise(conv)
    out_channels, in_channels = weight.shape[0], weight.shape[0] if depthwise else weight.shape[1]
    out = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=out_channels if depthwise else 1, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


def folded_conv(conv, bn):
    """nn.Conv2d (same groups) or, for FLGC, a frozen masked FLGConv2d computing conv then bn."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    weight, bias = fold_bn(weight, bias, bn)
    if isinstance(conv, FLGConv2d):
        layer = copy.deepcopy(conv)
        layer.weight.data.copy_(weight)
        layer.bias = nn.Parameter(bias)
        layer.freeze(grouped=False)  # the training form: mask times dense weight, every forward
        return layer
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True)
    out.weight.data.copy_(weight)
    out.bias.data.copy_(bias)
    return out


def fold_sequences(model, skip=()):
    """Fold every (conv, BatchNorm2d) pair of every nn.Sequential of model, in place: the conv takes
    the BN (folded_conv), the BN becomes Identity. Returns {path: new module}."""
    done = {}
    for name, sequence in list(model.named_modules()):
        if not isinstance(sequence, nn.Sequential) or name in skip:
            continue
        children = list(sequence)
        for i, (module, bn) in enumerate(zip(children[:-1], children[1:])):
            if isinstance(bn, nn.BatchNorm2d) and (isinstance(module, FLGConv2d) or (
                    isinstance(module, nn.Conv2d) and module.padding_mode == "zeros")):
                for index, replacement in ((i, folded_conv(module, bn)), (i + 1, nn.Identity())):
                    path = f"{name}.{index}" if name else str(index)
                    set_module(model, path, replacement)
                    done[path] = replacement
    return done
