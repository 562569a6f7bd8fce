"""A planned grouped convolution (flgc.method.planner.Plan) as an inference module."""
import torch

from ..method.planner import plan_pointwise, positions, take_rows
from . import native
from .folding import folded
from .modules import BlockPointwise, GroupedConv


def kernel_choices(device, channels_last):
    """The kernels 'auto' times for a grouped conv on `device` in this memory layout: 'native' only
    on the CPU with channels_last and the compiled kernels loaded (elsewhere it would run as 'conv')."""
    kernels = ("blocks", "conv", "matmul", "native", "dense")
    if torch.device(device).type != "cpu" or not channels_last or not native.available():
        kernels = tuple(name for name in kernels if name != "native")
    return kernels


def _blocks_module(plan, weight, in_channels, out_channels, in_gather, out_gather):
    module = BlockPointwise(in_channels, out_channels, plan.blocks, in_gather=in_gather, out_gather=out_gather)
    cols, rows = torch.as_tensor(plan.layout), torch.as_tensor(plan.compute_out)
    for (i0, i1, o0, o1), buffer in zip(plan.blocks, module.weights()):
        block = take_rows(weight[:, :, 0, 0], rows[o0:o1]).t()
        buffer.copy_(take_rows(block, cols[i0:i1]) if i1 > i0 else block[:0])
    return module


def _grouped_module(plan, weight, in_channels, out_channels, in_gather, out_gather, geometry):
    g = plan.groups
    conv_in, conv_out = len(plan.layout), len(plan.compute_out)
    shape = {} if geometry is None else {
        "kernel_size": geometry.kernel_size, "stride": geometry.stride, "padding": geometry.padding,
        "dilation": geometry.dilation}
    module = GroupedConv(in_channels, out_channels, conv_in, conv_out, g, **shape, in_gather=in_gather,
                         out_gather=out_gather, matmul=plan.strategy == "matmul", native=plan.strategy == "native")
    full = take_rows(take_rows(weight, plan.compute_out).transpose(0, 1), plan.layout).transpose(0, 1)
    cin_g, cout_g = conv_in // g, conv_out // g
    for k in range(g):
        module.conv.weight.data[k * cout_g:(k + 1) * cout_g] = \
            full[k * cout_g:(k + 1) * cout_g, k * cin_g:(k + 1) * cin_g]
    return module


def build_pointwise(plan, weight, bias, in_channels, out_channels, in_index=None, geometry=None, out_order=None):
    """The module of a plan ('blocks', 'conv', 'matmul' or 'native'). weight: out x hidden (full; 2-d for 1x1, or 4-d),
    bias: out. The module's input is already in plan.layout order (after in_index, when given).
    Its output holds the filters of out_order (original filter ids, -1 = any; default: every filter
    in original order), gathered from compute order only where they differ. `geometry` (a conv)
    gives kernel, stride, padding and dilation to the 'conv' kind."""
    wanted = list(range(out_channels)) if out_order is None else list(out_order)
    out_index = positions(plan.compute_out, wanted)
    weight = weight if weight.dim() == 4 else weight[:, :, None, None]
    gathers = (in_index is not None, out_index is not None)
    if plan.strategy == "blocks":
        gathered = in_channels if in_index is None else len(in_index)  # its gather reads any channels
        module = _blocks_module(plan, weight, gathered, len(wanted), *gathers)
    else:
        module = _grouped_module(plan, weight, in_channels, len(wanted), *gathers, geometry)
    with torch.no_grad():
        (module.bias if plan.strategy == "blocks" else module.conv.bias).copy_(take_rows(bias, plan.compute_out))
        if in_index is not None:
            module.in_index.index.copy_(in_index)
        if out_index is not None:
            module.out_index.index.copy_(out_index)
    return module


def generic_flgc(layer, bn=None):
    """Any FLGConv2d (and the BatchNorm after it) -> gather inputs, padded grouped conv (any kernel),
    gather outputs."""
    weight, bias = folded(layer, bn)
    plan = plan_pointwise(layer.input_groups().cpu(), layer.output_groups().cpu(), layer.groups, "conv")
    return build_pointwise(plan, weight, bias, layer.in_channels, layer.out_channels,
                           in_index=torch.as_tensor(plan.layout).clamp(min=0), geometry=layer)
