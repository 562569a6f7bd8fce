"""Fully Learnable Group Convolution (FLGC, CVPR 2019).

A convolution whose input channels and filters are each assigned to one of G groups by learnable
logits; a filter only sees the input channels of its own group. The assignment is the row-wise
argmax of softmax(logits); gradients reach the logits with a straight-through estimator.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .planner import channel_gather, plan_pointwise

GRADIENTS = ("straight_through", "reference_masked")
INITS = ("uniform", "random")
WEIGHT_GRADIENTS = ("masked", "dense")


def hard_assignment(logits, temperature=1.0, gradient="straight_through"):
    """One-hot group assignment (rows x G) of `logits` (rows x G) with a gradient to the logits.

    straight_through: forward is the hard one-hot, backward is that of softmax(logits / temperature), every
    entry included.  reference_masked: as the public reference implementation, the gradient on the
    softmax output is kept only at the argmax entry, which in practice freezes the assignment.
    """
    soft = torch.softmax(logits / temperature, dim=1)
    # argmax of the logits: the same as of the softmax, without float ties, whatever the temperature
    hard = F.one_hot(logits.detach().argmax(dim=1), logits.shape[1]).to(soft.dtype)
    if gradient == "straight_through":
        return hard - soft.detach() + soft
    if gradient == "reference_masked":
        return hard + (soft - soft.detach()) * hard
    raise ValueError(f"unknown FLGC gradient {gradient!r}; allowed: {', '.join(GRADIENTS)}")


def _softmax_backward(logits, groups, grad_soft, temperature, masked):
    """Gradient to `logits` of sum(grad_soft * softmax(logits / temperature)); with `masked`, grad_soft is kept
    only at each row's argmax entry `groups` (the reference gradient)."""
    soft = torch.softmax(logits / temperature, dim=1)
    if masked:
        grad_soft = grad_soft * _one_hot(groups, logits.shape[1], grad_soft.dtype)
    return soft * (grad_soft - (grad_soft * soft).sum(dim=1, keepdim=True)) / temperature


def _one_hot(groups, count, dtype):
    return (groups[:, None] == torch.arange(count, device=groups.device)).to(dtype)


class _StraightThroughMask(torch.autograd.Function):
    """M[o, i] = [group of filter o == group of input i] in the forward pass; backward is that of
    M = F S^T with F, S the straight-through one-hot assignments of filters and inputs
    (`hard_assignment`): the gradient on F is grad_M summed over the columns of each input group, on S
    over the rows of each filter group, each then through the softmax backward. No host sync and no data-dependent shape."""

    @staticmethod
    def forward(ctx, input_logits, output_logits, temperature, masked, dtype):
        input_groups, output_groups = input_logits.argmax(dim=1), output_logits.argmax(dim=1)
        ctx.save_for_backward(input_logits, output_logits, input_groups, output_groups)
        ctx.temperature, ctx.masked = temperature, masked
        return (output_groups[:, None] == input_groups[None, :]).to(dtype)

    @staticmethod
    def backward(ctx, grad_mask):
        input_logits, output_logits, input_groups, output_groups = ctx.saved_tensors
        groups = input_logits.shape[1]
        grad_mask = grad_mask.to(input_logits.dtype)
        # one-hot matrix products rather than index_add: deterministic sums on every device
        grad_filters = grad_mask @ _one_hot(input_groups, groups, grad_mask.dtype)
        grad_inputs = grad_mask.t() @ _one_hot(output_groups, groups, grad_mask.dtype)
        t, masked = ctx.temperature, ctx.masked
        return (_softmax_backward(input_logits, input_groups, grad_inputs, t, masked),
                _softmax_backward(output_logits, output_groups, grad_filters, t, masked), None, None, None)


def balanced_logits(rows, groups, std):
    """N(0, std^2) logits (rows x G) whose row-wise argmax is a random balanced assignment: each group
    gets rows/G rows (sizes differ by at most 1). Each row's largest draw is swapped into the column of
    its group, so the logit values are distributed as in the random init. Uses the torch RNG."""
    logits = torch.randn(rows, groups) * std
    # which groups receive the rows/G + 1 rows is itself random when G does not divide rows
    assigned = torch.randperm(groups)[torch.randperm(rows) % groups]
    index = torch.arange(rows)
    top = logits.argmax(dim=1)
    largest, current = logits[index, top].clone(), logits[index, assigned].clone()
    logits[index, top] = current
    logits[index, assigned] = largest
    return logits


class FLGConv2d(nn.Module):
    """Conv2d whose dense weight (out x in x kh x kw) is masked by a learned group structure.

    input_group_logits (in x G) assigns input channels to groups, output_group_logits (out x G)
    assigns filters; the connection mask is M = F S^T (out x in) with F, S the hard one-hot
    assignments of filters and input channels. Groups may be non-uniform or empty; any
    1 <= G <= min(in, out) is allowed.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=8, bias=False, logit_init_std=1.0, temperature=1.0,
                 gradient="straight_through", init="uniform", weight_gradient="masked"):
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"FLGConv2d groups must be an integer >= 1, got {groups!r}")
        if groups > min(in_channels, out_channels):
            raise ValueError(f"FLGConv2d groups={groups} exceeds the channels "
                             f"(in={in_channels}, out={out_channels}); allowed: 1..{min(in_channels, out_channels)}")
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown FLGC gradient {gradient!r}; allowed: {', '.join(GRADIENTS)}")
        if weight_gradient not in WEIGHT_GRADIENTS:
            raise ValueError(f"unknown FLGC weight gradient {weight_gradient!r}; allowed: {', '.join(WEIGHT_GRADIENTS)}")
        if init not in INITS:
            raise ValueError(f"unknown FLGC init {init!r}; allowed: {', '.join(INITS)}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.temperature, self.gradient, self.weight_gradient = temperature, gradient, weight_gradient
        self.frozen = False
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if init == "uniform":
            input_logits = balanced_logits(in_channels, groups, logit_init_std)
            output_logits = balanced_logits(out_channels, groups, logit_init_std)
        else:
            input_logits = torch.randn(in_channels, groups) * logit_init_std
            output_logits = torch.randn(out_channels, groups) * logit_init_std
        self.input_group_logits = nn.Parameter(input_logits)
        self.output_group_logits = nn.Parameter(output_logits)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bias={self.bias is not None}, gradient={self.gradient}"
                + (f", weight_gradient={self.weight_gradient}" if self.weight_gradient != "masked" else ""))

    # --- the hard structure -------------------------------------------------------------------
    def input_groups(self):
        """Group index of every input channel (LongTensor, in)."""
        return self.input_group_logits.detach().argmax(dim=1)

    def output_groups(self):
        """Group index of every filter (LongTensor, out)."""
        return self.output_group_logits.detach().argmax(dim=1)

    def group_sizes(self):
        """(input channels per group, filters per group), two LongTensors of length G."""
        return (torch.bincount(self.input_groups(), minlength=self.groups),
                torch.bincount(self.output_groups(), minlength=self.groups))

    def hard_mask(self):
        """Connection mask (out x in) of the hard structure, 1 where filter and channel share a group."""
        return (self.output_groups()[:, None] == self.input_groups()[None, :]).to(self.weight.dtype)

    def connections(self):
        """Number of (filter, input channel) pairs that share a group."""
        in_sizes, out_sizes = self.group_sizes()
        return int((in_sizes * out_sizes).sum())

    def macs(self, out_height, out_width):
        """Multiply-accumulates of the hard structure for one image: sum_g in_g out_g kh kw H W."""
        kh, kw = self.kernel_size
        return self.connections() * kh * kw * out_height * out_width

    def freeze(self, grouped=False):
        """Fix the assignment: logits stop training and the straight-through path is skipped. With
        `grouped`, the forward then computes a grouped conv (groups padded to equal size) on gathered
        channels instead of the masked dense conv; the dense weight stays the trained parameter.
        (Measured on 2 CPU threads, the gathers make `grouped` slower: see docs/training-speed.md.)"""
        if self.frozen:
            return
        self.frozen = True
        self.input_group_logits.requires_grad_(False)
        self.output_group_logits.requires_grad_(False)
        if grouped:
            self._build_grouped()

    def _build_grouped(self):
        plan = plan_pointwise(self.input_groups().cpu(), self.output_groups().cpu(), self.groups, "conv")
        layout, rows = torch.tensor(plan.layout), torch.tensor(plan.compute_out)
        width = len(layout) // plan.groups
        columns = layout.view(plan.groups, width).repeat_interleave(len(rows) // plan.groups, dim=0)
        mask = self.hard_mask().cpu()
        valid = (rows[:, None] >= 0) & (columns >= 0)
        valid &= mask[rows.clamp(min=0)[:, None], columns.clamp(min=0)] > 0
        position = {int(c): i for i, c in enumerate(rows) if c >= 0}
        device = self.weight.device
        for name, value in (("_rows", rows.clamp(min=0)), ("_columns", columns.clamp(min=0)),
                            ("_valid", valid.to(self.weight.dtype)), ("_in_index", layout.clamp(min=0)),
                            ("_out_index", torch.tensor([position[o] for o in range(self.out_channels)]))):
            self.register_buffer(name, value.to(device), persistent=False)
        self._active_groups = plan.groups

    def _grouped_forward(self, x):
        weight = self.weight[self._rows[:, None], self._columns] * self._valid[:, :, None, None]
        bias = self.bias[self._rows] if self.bias is not None else None
        y = F.conv2d(channel_gather(x, self._in_index), weight, bias, self.stride, self.padding,
                     self.dilation, self._active_groups)
        return channel_gather(y, self._out_index)

    # --- forward ------------------------------------------------------------------------------
    def mask(self):
        """The connection mask M = F S^T (out x in), differentiable with respect to the logits."""
        if self.frozen:
            return self.hard_mask()
        return _StraightThroughMask.apply(self.input_group_logits, self.output_group_logits, self.temperature,
                                          self.gradient == "reference_masked", self.weight.dtype)

    def forward(self, x):
        if self.frozen and hasattr(self, "_rows"):
            return self._grouped_forward(x)
        mask = self.mask()[:, :, None, None]
        weight = self.weight * mask
        if self.weight_gradient == "dense" and not self.frozen:
            # value W * M; gradient of W unmasked: the weights of absent connections train as if present,
            # so the logits' gradient (grad * W) weighs a possible connection by a trained weight
            weight = weight + (self.weight - self.weight.detach()) * (1 - mask.detach())
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)


def flgc_layers(model, trainable=False):
    """[(name, FLGConv2d)] of every FLGC layer in `model`, in module order; with `trainable`, only the layers
    whose assignment still learns (not frozen). The one scan of a model for its FLGC layers."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FLGConv2d) and not (trainable and m.frozen)]
