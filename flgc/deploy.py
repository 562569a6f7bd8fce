"""Deployment: a trained network -> an inference network that computes only in-group connections.

convert(model) folds every BatchNorm into the convolution before it and rewrites every grouped
1x1 convolution (FLGC's learned groups, standard group conv, dense) so that each group's input
channels and filters are contiguous:

- inside an inverted residual (expand 1x1 -> ReLU6 -> depthwise -> ReLU6 -> projection 1x1) the
  hidden channels are produced directly in the order the projection needs: the permutation is folded
  into the expand conv's rows and the depthwise weights, never gathered at run time. Hidden channels
  that no projection filter reads are dropped with the expand and depthwise channels that made them;
- the grouped 1x1 convs of a block are computed by the fastest (measured on the whole block, for the
  batch size and memory layout) of: 'blocks', one matrix product per group on channel slices written
  into one output; 'conv', one standard grouped convolution over groups padded to equal size with
  zero weights; 'dense', one dense conv with zeros outside the groups (no gathers; MACs of the
  dense layer, minus the pruned channels);
- an FLGC expand conv (its input order is fixed by the residual stream) gathers its input channels
  once and computes one product per run of hidden channels that share an expand group;
- outputs go back to the original channel order with one gather only where that order is needed.
Any other FLGConv2d (any kernel size, any network) becomes a padded grouped conv with gathers.

The result has the model's own forward; convert records the replaced modules as a plain-data
spec (model.deploy_spec) so a checkpoint can rebuild it: rebuild(model, spec).
"""
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layer import FLGConv2d

STRATEGIES = ("auto", "blocks", "conv", "dense")


# ---- small inference modules -----------------------------------------------------------------
def channel_gather(x, index):
    """x[:, index] keeping a channels_last tensor channels_last (a gather on its N*H*W x C view)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing():
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c).index_select(1, index)
        return rows.view(n, h, w, -1).permute(0, 3, 1, 2)
    return x.index_select(1, index)


class ChannelGather(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.register_buffer("index", torch.zeros(size, dtype=torch.long))

    def forward(self, x):
        return channel_gather(x, self.index)

    def spec(self):
        return {"type": "ChannelGather", "size": self.index.numel()}


class GroupedConv(nn.Module):
    """Standard grouped conv over groups padded to equal size, between optional channel gathers."""

    def __init__(self, in_channels, out_channels, conv_in, conv_out, groups, kernel_size=1, stride=1,
                 padding=0, dilation=1, in_gather=False, out_gather=False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = nn.Conv2d(conv_in, conv_out, kernel_size, stride, padding, dilation, groups, bias=True)
        self.in_index = ChannelGather(conv_in) if in_gather else None
        self.out_index = ChannelGather(out_channels) if out_gather else None

    def forward(self, x):
        if self.in_index is not None:
            x = self.in_index(x)
        x = self.conv(x)
        return self.out_index(x) if self.out_index is not None else x

    def spec(self):
        c = self.conv
        return {"type": "GroupedConv", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "conv_in": c.in_channels, "conv_out": c.out_channels, "groups": c.groups,
                "kernel_size": list(c.kernel_size), "stride": list(c.stride), "padding": list(c.padding),
                "dilation": list(c.dilation), "in_gather": self.in_index is not None,
                "out_gather": self.out_index is not None}


class BlockPointwise(nn.Module):
    """1x1 conv as one matrix product per block of contiguous (input range, output range).

    Blocks with an empty input range output their bias. In channels_last, products are written
    straight into column slices of one output matrix (no concatenation); when tracing for export,
    the same computation is written as per-block 1x1 convs and a concatenation.
    """

    def __init__(self, in_channels, out_channels, blocks, in_gather=False, out_gather=False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.blocks = [tuple(b) for b in blocks]
        self.compute_channels = max((b[3] for b in self.blocks), default=0)
        for k, (i0, i1, o0, o1) in enumerate(self.blocks):
            self.register_buffer(f"weight{k}", torch.zeros(i1 - i0, o1 - o0))  # transposed: in x out
        self.register_buffer("bias", torch.zeros(self.compute_channels))
        self.in_index = ChannelGather(in_channels) if in_gather else None
        self.out_index = ChannelGather(out_channels) if out_gather else None

    def weights(self):
        return [getattr(self, f"weight{k}") for k in range(len(self.blocks))]

    def forward(self, x):
        if self.in_index is not None:
            x = self.in_index(x)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not x.is_contiguous(
                memory_format=torch.channels_last):
            parts = []
            for (i0, i1, o0, o1), weight in zip(self.blocks, self.weights()):
                bias = self.bias[o0:o1]
                if i1 > i0:
                    parts.append(F.conv2d(x[:, i0:i1], weight.t()[:, :, None, None], bias))
                else:
                    parts.append(bias[None, :, None, None].expand(x.shape[0], -1, x.shape[2], x.shape[3]))
            y = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        else:
            n, c, h, w = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(-1, c)
            out = rows.new_empty(rows.shape[0], self.compute_channels)
            for (i0, i1, o0, o1), weight in zip(self.blocks, self.weights()):
                if i1 > i0:
                    torch.addmm(self.bias[o0:o1], rows[:, i0:i1], weight, out=out[:, o0:o1])
                else:
                    out[:, o0:o1] = self.bias[o0:o1]
            y = out.view(n, h, w, -1).permute(0, 3, 1, 2)
        return self.out_index(y) if self.out_index is not None else y

    def spec(self):
        return {"type": "BlockPointwise", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "blocks": [list(b) for b in self.blocks], "in_gather": self.in_index is not None,
                "out_gather": self.out_index is not None}


# ---- specs: rebuild converted modules from plain data -----------------------------------------
def spec_of(module):
    if isinstance(module, nn.Sequential):
        return {"type": "Sequential", "children": [spec_of(m) for m in module]}
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": list(module.padding), "dilation": list(module.dilation),
                "groups": module.groups, "bias": module.bias is not None}
    if isinstance(module, (nn.ReLU6, nn.Identity)):
        return {"type": type(module).__name__}
    return module.spec()


def from_spec(spec):
    kind, args = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    if kind == "Sequential":
        return nn.Sequential(*[from_spec(s) for s in args["children"]])
    if kind == "ReLU6":
        return nn.ReLU6(inplace=True)
    if kind == "Identity":
        return nn.Identity()
    classes = {"Conv2d": nn.Conv2d, "GroupedConv": GroupedConv, "BlockPointwise": BlockPointwise,
               "ChannelGather": ChannelGather}
    if kind not in classes:
        raise ValueError(f"unknown deployed module type {kind!r}")
    return classes[kind](**args)


def _set_module(model, path, module):
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def rebuild(model, spec):
    """Apply the replacements of a deploy spec to a freshly built training model (weights empty)."""
    for path, module_spec in spec.items():
        _set_module(model, path, from_spec(module_spec))
    return model.eval()


# ---- folding ----------------------------------------------------------------------------------
def bn_scale_shift(bn):
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def _is_depthwise(conv):
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1)
            and conv.groups == conv.in_channels == conv.out_channels > 1)


def dense_weight(conv):
    """Full (out x in x kh x kw) weight of a conv, zero outside its groups (FLGC: the hard mask);
    a depthwise conv keeps its (channels x 1 x kh x kw) weight."""
    if isinstance(conv, FLGConv2d):
        return conv.weight.detach() * conv.hard_mask()[:, :, None, None]
    w = conv.weight.detach()
    g = conv.groups
    if g == 1 or _is_depthwise(conv):  # dense, or depthwise (kept per channel)
        return w.clone()
    out_g, in_g = conv.out_channels // g, conv.in_channels // g
    full = w.new_zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    for k in range(g):
        full[k * out_g:(k + 1) * out_g, k * in_g:(k + 1) * in_g] = w[k * out_g:(k + 1) * out_g]
    return full


def groups_of(conv):
    """(group per input channel, group per filter, G) of a 1x1 conv of any kind."""
    if isinstance(conv, FLGConv2d):
        return conv.input_groups().cpu(), conv.output_groups().cpu(), conv.groups
    g = conv.groups
    return (torch.arange(conv.in_channels) // (conv.in_channels // g),
            torch.arange(conv.out_channels) // (conv.out_channels // g), g)


def folded(conv, bn=None):
    """(full weight, bias) of conv followed by bn (either may lack a bias / be None)."""
    weight = dense_weight(conv)
    bias = conv.bias.detach().clone() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        weight = weight * scale[:, None, None, None]
        bias = bias * scale + shift
    return weight, bias


def plain_conv(conv, weight, bias):
    """nn.Conv2d with conv's geometry holding weight, bias (depthwise stays depthwise, else dense)."""
    depthwise = _is_depthwise(conv)
    out_channels, in_channels = weight.shape[0], weight.shape[0] if depthwise else weight.shape[1]
    out = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=out_channels if depthwise else 1, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


# ---- planning a grouped pointwise layer -------------------------------------------------------
class Plan:
    """How to compute y = W h + b (W: out x hidden, zero outside groups) for one strategy.

    layout: hidden channel per compute input position (-1 = zero padding), the order the producer
    must deliver; compute_out: original filter per compute output position (-1 = padding).
    """

    def __init__(self, strategy, layout, compute_out, blocks, groups=None):
        self.strategy, self.layout, self.compute_out, self.blocks, self.groups = (
            strategy, layout, compute_out, blocks, groups)


def plan_pointwise(gin, gout, groups, strategy, order_key=None):
    """Plan a grouped 1x1 conv whose input order is free (chosen here, delivered by the producer).

    Input channels of groups without filters are left out (pruned); filters of groups without inputs
    output only their bias. order_key(channel) orders the channels inside a group (e.g. by the
    producer's own groups).
    """
    in_members = [sorted((gin == g).nonzero().flatten().tolist(), key=order_key) for g in range(groups)]
    out_members = [(gout == g).nonzero().flatten().tolist() for g in range(groups)]
    active = [g for g in range(groups) if in_members[g] and out_members[g]]
    dead = sorted(o for g in range(groups) if not in_members[g] for o in out_members[g])
    if not active:  # nothing connects: one zero input channel, every output is its bias
        return Plan(strategy, [-1], dead, [(0, 1, 0, len(dead))] if dead else [], 1)
    if strategy == "blocks":
        layout, compute_out, blocks = [], [], []
        for g in active:
            blocks.append((len(layout), len(layout) + len(in_members[g]),
                           len(compute_out), len(compute_out) + len(out_members[g])))
            layout += in_members[g]
            compute_out += out_members[g]
        if dead:
            blocks.append((0, 0, len(compute_out), len(compute_out) + len(dead)))
            compute_out += dead
        return Plan("blocks", layout, compute_out, blocks)
    # 'conv': equal-size groups, padded with zero weights; dead filters join the first group
    outs = {g: out_members[g] + (dead if g == active[0] else []) for g in active}
    cmax = max(len(in_members[g]) for g in active)
    omax = max(len(outs[g]) for g in active)
    layout, compute_out = [], []
    for g in active:
        layout += in_members[g] + [-1] * (cmax - len(in_members[g]))
        compute_out += outs[g] + [-1] * (omax - len(outs[g]))
    return Plan("conv", layout, compute_out, None, len(active))


def _take_rows(matrix, index, fill=0.0):
    """matrix[index] with zero (fill) rows where index is -1."""
    index = torch.as_tensor(index, dtype=torch.long)
    out = matrix.new_full((len(index), *matrix.shape[1:]), fill)
    keep = index >= 0
    out[keep] = matrix[index[keep]]
    return out


def _inverse(compute_out, channels):
    """For every original channel, its position in compute order; None when that is the identity."""
    position = {c: i for i, c in enumerate(compute_out) if c >= 0}
    index = [position[c] for c in range(channels)]
    if index == list(range(channels)) and len(compute_out) == channels:
        return None
    return torch.tensor(index, dtype=torch.long)


def build_pointwise(plan, weight, bias, in_channels, out_channels, in_index=None, geometry=None):
    """The module of a plan. weight: out x hidden (full; 2-d for 1x1, or 4-d), bias: out. The module's
    input is already in plan.layout order (after in_index, when given); its output is in original
    filter order. `geometry` (a conv) gives kernel, stride, padding and dilation to the 'conv' kind."""
    out_index = _inverse(plan.compute_out, out_channels)
    cols = torch.as_tensor(plan.layout)
    rows = torch.as_tensor(plan.compute_out)
    weight = weight if weight.dim() == 4 else weight[:, :, None, None]
    if plan.strategy == "blocks":
        module = BlockPointwise(in_channels, out_channels, plan.blocks, in_gather=in_index is not None,
                                out_gather=out_index is not None)
        for (i0, i1, o0, o1), buffer in zip(plan.blocks, module.weights()):
            block = _take_rows(weight[:, :, 0, 0], rows[o0:o1]).t()
            buffer.copy_(_take_rows(block, cols[i0:i1]) if i1 > i0 else block[:0])
        module.bias.copy_(_take_rows(bias, rows))
    else:
        g = plan.groups
        conv_in, conv_out = len(plan.layout), len(plan.compute_out)
        shape = {} if geometry is None else {
            "kernel_size": geometry.kernel_size, "stride": geometry.stride, "padding": geometry.padding,
            "dilation": geometry.dilation}
        module = GroupedConv(in_channels, out_channels, conv_in, conv_out, g, **shape,
                             in_gather=in_index is not None, out_gather=out_index is not None)
        full = _take_rows(_take_rows(weight, rows).transpose(0, 1), cols).transpose(0, 1)
        cin_g, cout_g = conv_in // g, conv_out // g
        with torch.no_grad():
            for k in range(g):
                module.conv.weight[k * cout_g:(k + 1) * cout_g] = \
                    full[k * cout_g:(k + 1) * cout_g, k * cin_g:(k + 1) * cin_g]
            module.conv.bias.copy_(_take_rows(bias, rows))
    with torch.no_grad():
        if in_index is not None:
            module.in_index.index.copy_(in_index)
        if out_index is not None:
            module.out_index.index.copy_(out_index)
    return module


# ---- inverted residual blocks -----------------------------------------------------------------
def _is_inverted_residual(module):
    return (hasattr(module, "conv") and hasattr(module, "shortcut") and isinstance(module.conv, nn.Sequential)
            and len(module.conv) in (5, 8))


def _is_inverted_residual_deployed(module):
    return hasattr(module, "conv") and hasattr(module, "shortcut") and isinstance(module.conv, nn.Sequential)


def _time(module, x, repeats=5):
    with torch.no_grad():
        module(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            best = min(best, time.perf_counter() - start)
    return best


def build_block(block, strategy):
    """The deployed nn.Sequential replacing block.conv (BN folded) with the grouped 1x1 convs
    computed by `strategy`: 'blocks' or 'conv' (groups contiguous, see the module docstring), or
    'dense': one dense conv whose weight is zero outside the groups (the masked form's cost, no
    gathers), still dropping hidden channels that no projection filter reads."""
    layers = list(block.conv)
    expand, expand_bn = (layers[0], layers[1]) if len(layers) == 8 else (None, None)
    depthwise, depthwise_bn, project, project_bn = layers[-5], layers[-4], layers[-2], layers[-1]
    hidden = depthwise.in_channels
    p_in, p_out, p_groups = groups_of(project)
    p_weight, p_bias = folded(project, project_bn)
    p_weight = p_weight[:, :, 0, 0]
    e_grouped = expand is not None and (isinstance(expand, FLGConv2d) or expand.groups > 1)
    e_out = groups_of(expand)[1] if e_grouped else None
    key = (lambda h: (int(e_out[h]), h)) if e_grouped else None
    p_grouped = isinstance(project, FLGConv2d) or project.groups > 1

    if not p_grouped or strategy == "dense":
        blocks_plan = plan_pointwise(p_in, p_out, p_groups, "blocks", key)
        kept = sorted(h for h in blocks_plan.layout if h >= 0) if p_grouped else list(range(hidden))
        plan = Plan("dense", sorted(kept, key=key) if key else kept, list(range(project.out_channels)), None)
        cols = torch.as_tensor(plan.layout, dtype=torch.long)
        if not len(cols):  # nothing connects: one zero channel keeps the shapes
            plan.layout, cols = [-1], torch.tensor([-1])
        project_module = plain_conv(project, _take_rows(p_weight.t(), cols).t()[:, :, None, None], p_bias)
    else:
        plan = plan_pointwise(p_in, p_out, p_groups, strategy, key)
        project_module = build_pointwise(plan, p_weight, p_bias, len(plan.layout), project.out_channels)
    layout = torch.as_tensor(plan.layout)

    modules = []
    if expand is not None:
        e_weight, e_bias = folded(expand, expand_bn)
        e_weight = e_weight[:, :, 0, 0]
        if not e_grouped or strategy == "dense":
            modules.append(plain_conv(expand, _take_rows(e_weight, layout)[:, :, None, None],
                                      _take_rows(e_bias, layout)))
        else:
            modules.append(_expand_blocks(expand, e_weight, e_bias, plan.layout))
        modules.append(nn.ReLU6(inplace=True))
    elif plan.layout != list(range(hidden)):
        gather = ChannelGather(len(plan.layout))
        gather.index.copy_(layout.clamp(min=0))  # padding positions read any channel: zero weights follow
        modules.append(gather)
    d_weight, d_bias = folded(depthwise, depthwise_bn)
    modules += [plain_conv(depthwise, _take_rows(d_weight, layout), _take_rows(d_bias, layout)),
                nn.ReLU6(inplace=True), project_module]
    return nn.Sequential(*modules)


def convert_block(block, input_shape, batch_size, strategy, channels_last):
    """build_block with the given strategy, or for 'auto' the fastest of blocks / conv / dense,
    timed on the whole block at this batch size and memory layout."""
    layers = list(block.conv)
    grouped = [m for m in (layers[0], layers[-2]) if isinstance(m, FLGConv2d) or (
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups > 1)]
    if not grouped:
        return build_block(block, "dense")
    if strategy != "auto":
        return build_block(block, strategy)
    options = [build_block(block, name) for name in ("blocks", "conv", "dense")]
    x = torch.randn(batch_size, *input_shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        options = [o.to(memory_format=torch.channels_last) for o in options]
    return min(options, key=lambda option: _time(option, x))


def _expand_blocks(expand, weight, bias, layout):
    """Grouped expand conv producing hidden channels in `layout` order: gather its inputs by group,
    then one product per run of consecutive hidden channels of the same expand group."""
    e_in, e_out, groups = groups_of(expand)
    used = {int(e_out[h]) for h in layout if h >= 0}
    order = [c for g in sorted(used) for c in (e_in == g).nonzero().flatten().tolist()]
    ranges, start = {}, 0
    for g in sorted(used):
        size = int((e_in == g).sum())
        ranges[g] = (start, start + size)
        start += size
    blocks, runs = [], []
    position = 0
    while position < len(layout):
        group = int(e_out[layout[position]]) if layout[position] >= 0 else -1
        end = position
        while end < len(layout) and (int(e_out[layout[end]]) if layout[end] >= 0 else -1) == group:
            end += 1
        i0, i1 = ranges.get(group, (0, 0))
        blocks.append((i0, i1, position, end))
        runs.append(group)
        position = end
    if not order:  # no input reaches any hidden channel: keep one input column for the shapes
        order = [0]
    module = BlockPointwise(len(order), len(layout), blocks, in_gather=True)
    order_t = torch.tensor(order, dtype=torch.long)
    layout_t = torch.as_tensor(layout)
    for (i0, i1, o0, o1), buffer in zip(blocks, module.weights()):
        if i1 > i0:
            buffer.copy_(weight[layout_t[o0:o1]][:, order_t[i0:i1]].t())
    module.bias.copy_(_take_rows(bias, layout_t))
    module.in_index.index.copy_(order_t)
    return module


# ---- the whole network ------------------------------------------------------------------------
def _record_block_inputs(model, input_size):
    """{block name: input shape C x H x W} of every inverted residual."""
    sizes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(inp[0].shape[1:])))
             for name, m in model.named_modules() if _is_inverted_residual(m)]
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for hook in hooks:
        hook.remove()
    return sizes


def _fold_pairs(sequence, keep_flgc=False):
    """{child index: replacement} folding every (conv, BN) pair of an nn.Sequential: the conv takes
    the BN (FLGC -> GroupedConv, or with keep_flgc a frozen masked FLGConv2d), the BN -> Identity."""
    children, replacements = list(sequence), {}
    for i, module in enumerate(children[:-1]):
        bn = children[i + 1]
        if not isinstance(bn, nn.BatchNorm2d) or not isinstance(module, (nn.Conv2d, FLGConv2d)):
            continue
        if isinstance(module, FLGConv2d):
            replacements[i] = _masked_flgc(module, bn) if keep_flgc else _generic_flgc(module, bn)
        else:
            scale, _ = bn_scale_shift(bn)
            conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                             module.padding, module.dilation, module.groups, bias=True)
            conv.weight.copy_(module.weight.detach() * scale[:, None, None, None])
            conv.bias.copy_(folded(module, bn)[1])
            replacements[i] = conv
        replacements[i + 1] = nn.Identity()
    return replacements


def _fold_all(model, keep_flgc, skip=()):
    """Fold BN in every nn.Sequential of model (in place); returns {path: new module}."""
    done = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Sequential) and name not in skip:
            for index, replacement in _fold_pairs(module, keep_flgc).items():
                path = f"{name}.{index}" if name else str(index)
                _set_module(model, path, replacement)
                done[path] = replacement
    return done


def _masked_flgc(layer, bn):
    layer = copy.deepcopy(layer)
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
        layer.weight.data.mul_(scale[:, None, None, None])
        layer.bias = nn.Parameter(bias * scale + shift)
    layer.freeze(grouped=False)  # the training form: mask times dense weight, every forward
    return layer


def fold_batchnorm(model):
    """A copy of `model` with BatchNorm folded into the conv before it, FLGC layers kept (masked)."""
    model = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        _fold_all(model, keep_flgc=True)
    return model


def _generic_flgc(layer, bn=None):
    """Any FLGConv2d -> gather inputs, padded grouped conv (any kernel), gather outputs."""
    weight, bias = folded(layer, bn)
    gin, gout, groups = groups_of(layer)
    plan = plan_pointwise(gin, gout, groups, "conv")
    return build_pointwise(plan, weight, bias, layer.in_channels, layer.out_channels,
                           in_index=torch.as_tensor(plan.layout).clamp(min=0), geometry=layer)


def convert(model, batch_size=1, strategy="auto", channels_last=True, input_size=(3, 32, 32)):
    """Inference form of `model` (a copy, eval mode, CPU, fp32); model.deploy_spec describes it.

    batch_size and channels_last are what the per-layer strategy choice is timed for.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    model = copy.deepcopy(model).cpu().float().eval()
    block_inputs = _record_block_inputs(model, input_size)
    replacements = {}
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if _is_inverted_residual(module):
                replacements[name + ".conv"] = convert_block(module, block_inputs[name], batch_size,
                                                             strategy, channels_last)
        for path, module in replacements.items():
            _set_module(model, path, module)
        replacements.update(_fold_all(model, keep_flgc=False, skip=set(replacements)))
        for name, module in list(model.named_modules()):
            if isinstance(module, FLGConv2d):
                replacements[name] = _generic_flgc(module)
                _set_module(model, name, replacements[name])
    model.deploy_spec = {path: spec_of(module) for path, module in replacements.items()}
    return model
