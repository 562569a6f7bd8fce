"""MobileNetV2's inverted residual blocks (flgc.models.mobilenetv2.InvertedResidual) rewritten so
that the grouped 1x1 convs run on contiguous channel slices.

Inside a block (expand 1x1 -> ReLU6 -> depthwise -> ReLU6 -> projection 1x1) the hidden channels
are produced directly in the order the projection needs: the permutation is folded into the expand
conv's rows and the depthwise weights, never gathered at run time. Hidden channels that no
projection filter reads are dropped with the expand and depthwise channels that made them. An FLGC
expand conv (its input order is fixed by the residual stream) gathers its input channels once and
computes one product per run of hidden channels that share an expand group.
"""
import torch
import torch.nn as nn

from ..method.layer import FLGConv2d
from ..method.planner import Plan, plan_pointwise, take_rows
from ..models.mobilenetv2 import InvertedResidual, block_roles
from .folding import folded, groups_of, plain_conv
from .modules import BlockPointwise, ChannelGather
from .plan_modules import build_pointwise, kernel_choices
from .timing import fastest, input_shapes


def is_grouped(conv):
    return conv is not None and (isinstance(conv, FLGConv2d) or conv.groups > 1)


def _dense_plan(parts, p_in, p_out, p_groups, key):
    """'dense': the projection as one dense conv (zeros outside the groups), no gathers; hidden
    channels that no filter reads are still dropped."""
    project = parts["project"]
    hidden = parts["depthwise"].in_channels
    if is_grouped(project):
        kept = sorted(h for h in plan_pointwise(p_in, p_out, p_groups, "blocks", key).layout if h >= 0)
    else:
        kept = list(range(hidden))
    layout = sorted(kept, key=key) if key else kept
    return Plan("dense", layout or [-1], list(range(project.out_channels)), None)


def _project(parts, strategy, key):
    """(plan, module) of the projection conv with its BN folded."""
    project = parts["project"]
    p_in, p_out, p_groups = groups_of(project)
    p_weight, p_bias = folded(project, parts["project_bn"])
    p_weight = p_weight[:, :, 0, 0]
    if not is_grouped(project) or strategy == "dense":
        plan = _dense_plan(parts, p_in, p_out, p_groups, key)
        weight = take_rows(p_weight.t(), plan.layout).t()[:, :, None, None]
        return plan, plain_conv(project, weight, p_bias)
    plan = plan_pointwise(p_in, p_out, p_groups, strategy, key)
    return plan, build_pointwise(plan, p_weight, p_bias, len(plan.layout), project.out_channels)


def build_block(block, strategy):
    """The deployed nn.Sequential replacing block.conv (BN folded) with the grouped 1x1 convs
    computed by `strategy`: 'blocks' (one product per group), 'conv' / 'matmul' / 'native' (one grouped
    conv, batched product or compiled grouped 1x1 kernel, groups padded to equal size) or 'dense'
    (one dense conv, zero outside the groups: the masked form's cost)."""
    parts = block.parts()
    expand, depthwise = parts["expand"], parts["depthwise"]
    e_grouped = is_grouped(expand)
    e_out = groups_of(expand)[1] if e_grouped else None
    key = (lambda h: (int(e_out[h]), h)) if e_grouped else None
    plan, project_module = _project(parts, strategy, key)
    layout = torch.as_tensor(plan.layout)
    deployed, modules = {"project": project_module}, []
    if expand is not None:
        e_weight, e_bias = folded(expand, parts["expand_bn"])
        e_weight = e_weight[:, :, 0, 0]
        if not e_grouped or strategy == "dense":
            deployed["expand"] = plain_conv(expand, take_rows(e_weight, layout)[:, :, None, None], take_rows(e_bias, layout))
        else:
            deployed["expand"] = _expand_blocks(expand, e_weight, e_bias, plan.layout)
    elif plan.layout != list(range(depthwise.in_channels)):
        gather = ChannelGather(len(plan.layout))
        gather.index.copy_(layout.clamp(min=0))  # padding positions read any channel: zero weights follow
        modules.append(gather)
    d_weight, d_bias = folded(depthwise, parts["depthwise_bn"])
    deployed["depthwise"] = plain_conv(depthwise, take_rows(d_weight, layout), take_rows(d_bias, layout))
    modules += [deployed[role] if role else nn.ReLU6(inplace=True) for role in deployed_roles(expand is not None)]
    return nn.Sequential(*modules)


def deployed_roles(expands):
    """The roles of a deployed block's layers in order (None: a ReLU6): those of the training block
    (flgc.models.mobilenetv2.block_roles) without its BatchNorms, which are folded into the convs. A block
    without an expand conv may start with a ChannelGather besides."""
    return tuple(role for role in block_roles(expands) if role is None or not role.endswith("_bn"))


def deploy_block(block, input_shape, batch_size, strategy, channels_last, device="cpu"):
    """build_block with the given strategy, or for 'auto' the fastest of blocks / conv / matmul / native
    (CPU, channels_last) / dense, timed on the whole block on `device` at this batch size and memory layout."""
    parts = block.parts()
    if not any(is_grouped(parts[name]) for name in ("expand", "project")):
        return build_block(block, "dense")
    if strategy != "auto":
        return build_block(block, strategy)
    options = [build_block(block, name) for name in kernel_choices(device, channels_last)]
    return fastest(options, input_shape, batch_size, device, channels_last)


def _expand_runs(layout, e_out, ranges):
    """(blocks, per-run group) of consecutive hidden channels of `layout` sharing an expand group."""
    blocks, position = [], 0
    group_of = [int(e_out[h]) if h >= 0 else -1 for h in layout]
    while position < len(layout):
        end = position
        while end < len(layout) and group_of[end] == group_of[position]:
            end += 1
        blocks.append((*ranges.get(group_of[position], (0, 0)), position, end))
        position = end
    return blocks


def _expand_blocks(expand, weight, bias, layout):
    """Grouped expand conv producing hidden channels in `layout` order: gather its inputs by group,
    then one product per run of consecutive hidden channels of the same expand group."""
    e_in, e_out, _ = groups_of(expand)
    used = sorted({int(e_out[h]) for h in layout if h >= 0})
    order, ranges = [], {}
    for g in used:
        members = (e_in == g).nonzero().flatten().tolist()
        ranges[g] = (len(order), len(order) + len(members))
        order += members
    blocks = _expand_runs(layout, e_out, ranges)
    order = order or [0]  # no input reaches any hidden channel: keep one input column for the shapes
    module = BlockPointwise(len(order), len(layout), blocks, in_gather=True)
    order_t, layout_t = torch.tensor(order, dtype=torch.long), torch.as_tensor(layout)
    for (i0, i1, o0, o1), buffer in zip(blocks, module.weights()):
        if i1 > i0:
            buffer.copy_(weight[layout_t[o0:o1]][:, order_t[i0:i1]].t())
    module.bias.copy_(take_rows(bias, layout_t))
    module.in_index.index.copy_(order_t)
    return module


def deploy_blocks(model, input_size, batch_size, strategy, channels_last, device):
    """{path: deployed Sequential} replacing the conv of every inverted residual of model."""
    blocks = [name for name, module in model.named_modules() if isinstance(module, InvertedResidual)]
    sizes = input_shapes(model, blocks, input_size)
    return {name + ".conv": deploy_block(module, sizes[name], batch_size, strategy, channels_last, device)
            for name, module in model.named_modules() if isinstance(module, InvertedResidual)}
