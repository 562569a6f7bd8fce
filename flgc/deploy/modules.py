"""The inference modules of deployed networks, and their plain-data spec (stored in checkpoints).

Spec type names are part of the deployed checkpoint format: keep them when renaming anything.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from ..method import planner
from . import native


def channel_gather(x, index, stride=1):
    """flgc.planner.channel_gather, by the compiled kernel where it applies (see flgc.deploy.native)."""
    if native.eligible(x):
        return native.gather_channels(x, index, stride)
    return planner.channel_gather(x, index, stride)


class ChannelGather(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.register_buffer("index", torch.zeros(size, dtype=torch.long))

    def forward(self, x, stride=1):
        return channel_gather(x, self.index, stride)

    def spec(self):
        return {"type": "ChannelGather", "size": self.index.numel()}


class PermutedAdd(nn.Module):
    """base + other where the two hold the same channels in different orders: the result is in
    base's order, out[:, index[i]] = base[:, index[i]] + other[:, i] (index: position in base of each
    channel of other; inverse: position in other of each channel of base). base may hold extra
    (padding) channels: their values are don't-cares. With `inplace` the sum is written into base
    (deployment sets it only where base is a fresh tensor read by nothing else); with `relu` the
    result is rectified (deployment folds a ReLU that reads only the sum)."""

    def __init__(self, size, base_size=None, inplace=False, relu=False):
        super().__init__()
        self.inplace, self.relu = inplace, relu
        self.register_buffer("index", torch.zeros(size, dtype=torch.long))
        self.register_buffer("inverse", torch.zeros(size if base_size is None else base_size, dtype=torch.long))

    def forward(self, base, other):
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if exporting or torch.is_grad_enabled() or base.dtype != other.dtype:
            out = base + channel_gather(other, self.inverse)
            return F.relu(out) if self.relu else out
        out = base if self.inplace else base.clone()
        if native.eligible(out, other):  # one pass: add and rectify each pixel's channels in cache
            return native.permuted_add_(out, other, self.index, self.relu)
        layout = torch.channels_last
        if out.is_contiguous() and other.is_contiguous():  # NCHW: whole channel planes
            out.index_add_(1, self.index, other)
        elif out.is_contiguous(memory_format=layout) and other.is_contiguous(memory_format=layout):
            # rows of N*H*W pixels: scatter each row's channels into place
            rows, source = (t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in (out, other))
            rows.scatter_add_(1, self.index.expand(rows.shape[0], -1), source)
        else:
            out.add_(channel_gather(other, self.inverse))
        return out.relu_() if self.relu else out

    def spec(self):
        return {"type": "PermutedAdd", "size": self.index.numel(), "base_size": self.inverse.numel(),
                "inplace": self.inplace, "relu": self.relu}


class PermutedSum(nn.Module):
    """a + b where the two hold the same channels in different orders, delivered in a third order:
    out[:, j] = a[:, left[j]] + b[:, right[j]] (deployment picks the order an FLGC conv reading the
    sum wants, so that conv needs no input gather); rectified with `relu`. Entries -1 in both
    indices give a zero channel (padding of that conv's groups). With `inplace` the result may be
    written over a (deployment sets it only where a is a fresh tensor read by nothing else)."""

    def __init__(self, size, relu=False, inplace=False, padded=False):
        super().__init__()
        self.relu, self.inplace, self.padded = relu, inplace, padded  # padded: some entries are -1
        self.register_buffer("left", torch.zeros(size, dtype=torch.long))
        self.register_buffer("right", torch.zeros(size, dtype=torch.long))

    def forward(self, a, b):
        if native.eligible(a, b):  # one pass: both operands read in place of two gathers and an add
            return native.permuted_sum(a, b, self.left, self.right, self.relu, self.inplace)
        out = channel_gather(a, self.left.clamp(min=0)) + channel_gather(b, self.right.clamp(min=0))
        if self.padded:
            out = out.masked_fill((self.left < 0).view(1, -1, 1, 1), 0.0)
        return F.relu(out) if self.relu else out

    def spec(self):
        return {"type": "PermutedSum", "size": self.left.numel(), "relu": self.relu, "inplace": self.inplace,
                "padded": self.padded}


class Orders(nn.Module):
    """Holds the ChannelGather, PermutedAdd and PermutedSum modules that channel-order rewriting adds to a graph."""

    def spec(self):
        return {"type": "Orders"}


class GroupedConv(nn.Module):
    """Standard grouped conv over groups padded to equal size, between optional channel gathers.

    With `matmul` (1x1, stride 1, no padding only), an NCHW input is computed as one batched matrix
    product (G x out/G x in/G weights times N x G x in/G x HW inputs): torch's CPU grouped conv on
    NCHW runs one im2col conv per group and concatenates them. With `native` (the same geometry), a
    channels_last float32 CPU input is computed by flgc.deploy.native's grouped 1x1 kernel (torch's grouped
    conv is slow for small groups); anything else (export, autograd, autocast, other layouts and
    devices, no compiled kernels) takes the conv.

    With an `epilogue` (a PermutedSum, set by fuse), forward(x, other) returns epilogue(conv(x),
    other): a residual sum of the conv's output and another tensor, delivered in a third channel
    order. The native kernel then sums each tile of output rows while it is in cache (the conv's
    output is never written whole); with `overwrite` the sum is written over `other` (deployment
    sets it only where other is a fresh tensor read by nothing after the sum).
    """

    def __init__(self, in_channels, out_channels, conv_in, conv_out, groups, kernel_size=1, stride=1,
                 padding=0, dilation=1, in_gather=False, out_gather=False, matmul=False, native=False,
                 epilogue=None, overwrite=False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        # a strided 1x1 conv reads every stride-th pixel: its input gather takes only those, and the
        # conv itself runs with stride 1
        rows, columns = _pair(stride)
        square = rows if rows == columns else 1
        self.subsample = square if in_gather and _pair(kernel_size) == (1, 1) and _pair(padding) == (0, 0) else 1
        conv_stride = 1 if self.subsample > 1 else stride
        self.conv = nn.Conv2d(conv_in, conv_out, kernel_size, conv_stride, padding, dilation, groups, bias=True)
        self.in_index = ChannelGather(conv_in) if in_gather else None
        self.out_index = ChannelGather(out_channels) if out_gather else None
        pointwise = self.conv.kernel_size == (1, 1) and self.conv.stride == (1, 1) and self.conv.padding == (0, 0)
        if (matmul or native) and not pointwise:
            raise ValueError("GroupedConv matmul / native need a 1x1 conv with stride 1 and no padding")
        self.matmul, self.native = matmul, native
        self._packed = self._packed_key = None  # the weight as the native kernel reads it, and its source
        self.epilogue, self.overwrite = None, False
        if epilogue is not None:  # from a spec
            self.fuse(PermutedSum(**{k: v for k, v in epilogue.items() if k != "type"}), overwrite)

    def fuse(self, epilogue, overwrite=False):
        """Take over a PermutedSum whose first operand is this conv's output (see the class doc)."""
        if not self.native or self.out_index is not None:
            raise ValueError("only a native GroupedConv without an output gather takes a sum epilogue")
        self.epilogue, self.overwrite = epilogue, overwrite

    def runs_native(self, x):
        """Whether input x (before the input gather, which keeps its layout) takes the native kernel."""
        return (self.native and native.eligible(x) and x.is_contiguous(memory_format=torch.channels_last)
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and self.conv.weight.requires_grad))

    def _packed_weight(self):
        weight = self.conv.weight
        key = (weight.data_ptr(), weight._version)
        if self._packed_key != key:
            self._packed, self._packed_key = native.pointwise_weight(weight.detach(), self.conv.groups), key
        return self._packed

    def _grouped_matmul(self, x):
        n, c, h, w = x.shape
        g, out = self.conv.groups, self.conv.out_channels
        dtype = _compute_dtype(x)
        weight = self.conv.weight.to(dtype).view(g, out // g, c // g)
        y = torch.matmul(weight, x.to(dtype).reshape(n, g, c // g, h * w))
        return y.add_(self.conv.bias.to(dtype).view(1, g, out // g, 1)).view(n, out, h, w)

    def forward(self, x, other=None):
        if (other is None) != (self.epilogue is None):
            raise ValueError("a GroupedConv takes a second input exactly when it has a sum epilogue")
        in_native = self.runs_native(x)
        if self.in_index is not None:
            x = self.in_index(x, self.subsample)
        if in_native and other is not None and native.eligible(other) \
                and other.is_contiguous(memory_format=torch.channels_last):
            sum_ = self.epilogue
            return native.grouped_pointwise_sum(x, self._packed_weight(), self.conv.bias.detach(), other,
                                                sum_.left, sum_.right, sum_.relu, self.overwrite)
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if self.matmul and not exporting and x.is_contiguous():
            x = self._grouped_matmul(x)
        elif in_native:
            x = native.grouped_pointwise(x, self._packed_weight(), self.conv.bias.detach())
        else:
            x = self.conv(x)
        x = self.out_index(x) if self.out_index is not None else x
        return x if other is None else self.epilogue(x, other)

    def spec(self):
        c = self.conv
        return {"type": "GroupedConv", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "conv_in": c.in_channels, "conv_out": c.out_channels, "groups": c.groups,
                "kernel_size": list(c.kernel_size), "stride": [self.subsample] * 2 if self.subsample > 1 else list(c.stride),
                "padding": list(c.padding),
                "dilation": list(c.dilation), "in_gather": self.in_index is not None,
                "out_gather": self.out_index is not None, **({"matmul": True} if self.matmul else {}),
                **({"native": True} if self.native else {}),
                **({"epilogue": self.epilogue.spec(), "overwrite": self.overwrite} if self.epilogue is not None else {})}


def _compute_dtype(x):
    """The dtype products run in: autocast's lower precision when it is on for x's device, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class BlockPointwise(nn.Module):
    """1x1 conv as one matrix product per block of contiguous (input range, output range).

    Blocks with an empty input range output their bias. In channels_last, products are written
    straight into column slices of one output matrix (no concatenation); when tracing for export,
    the same computation is written as per-block 1x1 convs and a concatenation. Under autocast the
    products run in autocast's dtype (addmm with out= is not cast by autocast itself).
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

    def _sliced_convs(self, x):
        parts = []
        for (i0, i1, o0, o1), weight in zip(self.blocks, self.weights()):
            bias = self.bias[o0:o1]
            if i1 > i0:
                parts.append(F.conv2d(x[:, i0:i1], weight.t()[:, :, None, None], bias))
            else:
                parts.append(bias[None, :, None, None].expand(x.shape[0], -1, x.shape[2], x.shape[3]))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def _sliced_products(self, x):
        dtype = _compute_dtype(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c).to(dtype)
        bias = self.bias.to(dtype)
        out = rows.new_empty(rows.shape[0], self.compute_channels)
        with torch.autocast(x.device.type, enabled=False):
            for (i0, i1, o0, o1), weight in zip(self.blocks, self.weights()):
                if i1 > i0:
                    torch.addmm(bias[o0:o1], rows[:, i0:i1], weight.to(dtype), out=out[:, o0:o1])
                else:
                    out[:, o0:o1] = bias[o0:o1]
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x):
        if self.in_index is not None:
            x = self.in_index(x)
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        # addmm with out= has no gradient: with autograd on, the per-block convs
        if exporting or torch.is_grad_enabled() or not x.is_contiguous(memory_format=torch.channels_last):
            y = self._sliced_convs(x)
        else:
            y = self._sliced_products(x)
        return self.out_index(y) if self.out_index is not None else y

    def spec(self):
        return {"type": "BlockPointwise", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "blocks": [list(b) for b in self.blocks], "in_gather": self.in_index is not None,
                "out_gather": self.out_index is not None}


PLAIN = (nn.ReLU6, nn.ReLU, nn.Identity)


def spec_of(module):
    """Plain-data description of a deployed module (rebuilt by from_spec, weights loaded after)."""
    if isinstance(module, nn.Sequential):
        return {"type": "Sequential", "children": [spec_of(m) for m in module]}
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": list(module.padding), "dilation": list(module.dilation),
                "groups": module.groups, "bias": module.bias is not None}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, PLAIN):
        return {"type": type(module).__name__}
    return module.spec()


def from_spec(spec):
    kind, args = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    if kind == "Sequential":
        return nn.Sequential(*[from_spec(s) for s in args["children"]])
    if kind in ("ReLU6", "ReLU"):
        return getattr(nn, kind)(inplace=True)
    if kind == "Identity":
        return nn.Identity()
    classes = {"Conv2d": nn.Conv2d, "Linear": nn.Linear, "GroupedConv": GroupedConv, "BlockPointwise": BlockPointwise,
               "ChannelGather": ChannelGather, "PermutedAdd": PermutedAdd, "PermutedSum": PermutedSum, "Orders": Orders}
    if kind not in classes:
        raise ValueError(f"unknown deployed module type {kind!r}")
    return classes[kind](**args)


def set_module(model, path, module):
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
