"""Deployment of any network that torch.fx traces.

The traced graph says where each tensor flows. Every BatchNorm2d that directly follows a conv is
folded into it. Then every grouped conv (FLGConv2d) is planned so that its groups are contiguous
channel slices, and its channel permutations are folded into its neighbours: a chain
  producer conv -> [activations, depthwise convs, folded BNs] -> consumer conv
(each tensor used once) carries its channels in the order the FLGC consumer wants (its producer
emits them so: rows of a dense conv permuted) or the FLGC producer makes (the consumer's columns
permuted), so no gather runs. An FLGC output outside such a chain (into a residual sum, or read
several times) keeps its compute order, carried on by flgc.deploy.orders; an FLGC input outside a
chain is gathered, x[:, index], once. Each FLGC layer's kernel ('blocks': one product
per group, 'conv': one grouped conv with groups padded to equal size, 'dense': zeros outside the
groups, 'matmul': the padded groups as one batched product, 'native': the padded groups by
flgc.deploy.native's grouped 1x1 kernel, CPU and channels_last only) is the fastest measured on the target
device for its input shape, batch size and memory layout.
"""

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..method.layer import FLGConv2d
from ..method.planner import Plan, index_in, plan_pointwise, take_rows
from .folding import dense_weight, fold_bn, folded_conv, groups_of, is_depthwise, plain_conv
from .orders import carry_orders, fuse_sums, reads_sum, worth_carrying
from .plan_modules import build_pointwise, kernel_choices
from .timing import fastest, input_shapes

# elementwise (hence channel-order blind) operations a permutation passes through unchanged
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.Sigmoid, nn.Tanh,
                       nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout)
ELEMENTWISE_FUNCTIONS = (F.relu, F.relu6, F.silu, F.hardswish, F.gelu, torch.relu, torch.sigmoid, torch.tanh)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, FLGConv2d) or super().is_leaf_module(module, qualified_name)


def trace(model):
    """The fx graph of model (FLGConv2d kept as one call), or None where the model does not trace."""
    try:
        return _Tracer().trace(model)
    except Exception:  # data-dependent control flow and the like: tracing fails in many ways
        return None


class Unit:
    """A conv of the graph being rewritten: its folded weight and bias, and the channel orders it
    must read (in_order) and produce (out_order), original channel ids with -1 for padding."""

    def __init__(self, path, conv):
        self.path, self.conv = path, conv
        # FLGC: the masked dense weight; any nn.Conv2d: its own (grouped or depthwise) weight
        self.weight = dense_weight(conv) if isinstance(conv, FLGConv2d) else conv.weight.detach().clone()
        self.bias = conv.bias.detach().clone() if conv.bias is not None else self.weight.new_zeros(self.weight.shape[0])
        self.in_order = self.out_order = self.plan = None
        self.delivered = False  # FLGC: its input arrives in plan.layout order (no input gather)
        self.out_free = False  # FLGC: its output may stay in compute order (a dense consumer permutes)
        self.free = False  # FLGC outside any chain: its compute order may travel on (flgc.deploy.orders)
        self.in_source = None  # FLGC reading a tensor held in this channel order (None: original order)
        self.changed = isinstance(conv, FLGConv2d)

    @property
    def flgc(self):
        return isinstance(self.conv, FLGConv2d)

    @property
    def dense(self):
        return not self.flgc and self.conv.groups == 1


class Graph:
    """The traced graph of a model with its convs as Units."""

    def __init__(self, model, graph):
        self.model, self.nodes = model, list(graph.nodes)
        calls = {}
        for node in self.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        self.units = {}
        for node in self.nodes:
            module = self.module(node)
            rebuildable = isinstance(module, FLGConv2d) or (
                isinstance(module, nn.Conv2d) and module.padding_mode == "zeros")  # rebuilt with zero padding
            if rebuildable and calls[node.target] == 1 and self._plain_call(node):
                self.units[node] = Unit(node.target, module)
        self.folded_bns = {}  # BN node -> its path (becomes Identity)
        self.bn_pairs = []  # (conv unit, the BatchNorm2d folded into it)
        self.calls = calls

    def module(self, node):
        """The module node calls; None for other nodes and for modules deployment adds to the graph
        (installed in the model only afterwards)."""
        if node.op != "call_module":
            return None
        try:
            return self.model.get_submodule(node.target)
        except AttributeError:
            return None

    @staticmethod
    def _plain_call(node):
        return len(node.args) == 1 and isinstance(node.args[0], fx.Node) and not node.kwargs

    def fold_batchnorms(self):
        for node in self.nodes:
            bn = self.module(node)
            source = node.args[0] if node.args else None
            if (isinstance(bn, nn.BatchNorm2d) and self.calls[node.target] == 1 and source in self.units
                    and len(source.users) == 1 and not bn.training):
                unit = self.units[source]
                unit.weight, unit.bias = fold_bn(unit.weight, unit.bias, bn)
                unit.changed = True
                self.folded_bns[node] = node.target
                self.bn_pairs.append((unit, bn))

    def elementwise(self, node):
        if node in self.folded_bns:
            return True
        if node.op == "call_module":
            return isinstance(self.module(node), ELEMENTWISE_MODULES) and self._plain_call(node)
        if node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
            return isinstance(node.args[0], fx.Node) and not any(isinstance(a, fx.Node) for a in node.args[1:])
        return False

    def chain_from(self, producer):
        """(depthwise units on the way, consumer unit) of the chain leaving producer, or None."""
        node, depthwise = producer, []
        while len(node.users) == 1:
            user = next(iter(node.users))
            unit = self.units.get(user)
            if unit is not None and is_depthwise(unit.conv):
                depthwise.append(unit)
            elif unit is not None and (unit.dense or unit.flgc):
                return depthwise, unit
            elif not self.elementwise(user):
                return None
            node = user
        return None

    def chains(self):
        """[(producer unit, depthwise units, consumer unit)] where producer or consumer is FLGC."""
        found = []
        for node, unit in self.units.items():
            if unit.dense or unit.flgc:
                chain = self.chain_from(node)
                if chain and (unit.flgc or chain[1].flgc):
                    found.append((unit, *chain))
        return found


def _pointwise(conv):
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def plan_for(unit, strategy):
    """Plan of an FLGC unit for 'blocks' / 'conv' / 'matmul' / 'native' / 'dense' (kept inputs only when delivered)."""
    gin, gout, groups = groups_of(unit.conv)
    if strategy in ("blocks", "matmul", "native") and not _pointwise(unit.conv):
        strategy = "conv"  # products on channel slices compute a 1x1, stride-1 conv
    if strategy != "dense":
        return plan_pointwise(gin, gout, groups, strategy)
    kept = sorted(h for h in plan_pointwise(gin, gout, groups, "blocks").layout if h >= 0)
    layout = (kept or [-1]) if unit.delivered else list(range(unit.conv.in_channels))
    return Plan("dense", layout, list(range(unit.conv.out_channels)), None)


def build(unit):
    """The inference module of a unit with its plan, orders and folded weights."""
    weight, bias = unit.weight, unit.bias
    if unit.flgc and unit.plan.strategy != "dense":
        source = unit.in_source or range(unit.conv.in_channels)  # padding (-1) reads position 0, zero weights
        arrives_in_layout = unit.delivered or list(source) == unit.plan.layout
        in_index = None if arrives_in_layout else torch.as_tensor(index_in(source, unit.plan.layout))
        in_channels = len(unit.plan.layout) if arrives_in_layout else unit.conv.in_channels
        return build_pointwise(unit.plan, weight, bias, in_channels, unit.conv.out_channels, in_index=in_index,
                               geometry=unit.conv, out_order=unit.out_order)
    in_order = unit.plan.layout if unit.flgc and unit.delivered else unit.in_order
    if in_order is not None and not is_depthwise(unit.conv):
        weight = take_rows(weight.transpose(0, 1), in_order).transpose(0, 1)
    if unit.out_order is not None:
        weight, bias = take_rows(weight, unit.out_order), take_rows(bias, unit.out_order)
    if unit.flgc or unit.conv.groups == 1 or is_depthwise(unit.conv):
        return plain_conv(unit.conv, weight, bias)
    conv = unit.conv  # another grouped conv: BN folded, groups kept
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True)
    out.weight.data.copy_(weight)
    out.bias.data.copy_(bias)
    return out


def choose(unit, strategy, shape, batch_size, device, channels_last, sum_fed=False):
    """Set unit.plan: the given strategy, or for 'auto' the fastest kernel timed on `device`.
    sum_fed: the unit reads a residual sum, which deployment may deliver in its input layout, so
    its grouped kernels are timed without their input gather."""
    plans = {}
    for name in (kernel_choices(device, channels_last) if strategy == "auto" else (strategy,)):
        plan = plan_for(unit, name)
        plans.setdefault(plan.strategy, plan)
    if len(plans) == 1:
        unit.plan = next(iter(plans.values()))
        return
    options, shapes = [], []
    for plan in plans.values():
        unit.plan, unit.out_order = plan, plan.compute_out if unit.out_free else None
        unit.in_source = plan.layout if sum_fed and plan.strategy != "dense" else None
        options.append(build(unit))
        shapes.append((len(plan.layout) if unit.delivered or unit.in_source else shape[0], *shape[1:]))
    unit.out_order = unit.in_source = None
    best = fastest(options, shapes, batch_size, device, channels_last)
    unit.plan = list(plans.values())[options.index(best)]


def route(producer, depthwise, consumer):
    """Carry the chain's channels in the order the FLGC consumer reads (or the FLGC producer makes)."""
    order = consumer.plan.layout if consumer.flgc else producer.plan.compute_out
    if order == list(range(producer.conv.out_channels)):
        return
    for unit in (producer, *depthwise):
        unit.out_order, unit.changed = order, True
    if not consumer.flgc:
        consumer.in_order, consumer.changed = order, True


def deploy(model, input_size, batch_size, strategy, channels_last, device):
    """For a model torch.fx traces (BN folded, FLGC as contiguous groups): ({path: inference module},
    the traced fx graph, the recorded graph edits of flgc.deploy.orders); None where it does not trace."""
    traced = trace(model)
    if traced is None:
        return None
    graph = Graph(model, traced)
    graph.fold_batchnorms()
    chains = graph.chains()
    for producer, _, consumer in chains:
        consumer.delivered = consumer.delivered or consumer.flgc
        producer.out_free = producer.flgc and not consumer.flgc
    producers = {producer for producer, _, _ in chains}
    for node, unit in graph.units.items():
        if unit.flgc and unit not in producers and worth_carrying(graph, node):
            unit.free = unit.out_free = True
    flgc_units = [unit for unit in graph.units.values() if unit.flgc]
    shapes = input_shapes(model, [unit.path for unit in flgc_units], input_size)
    for node, unit in graph.units.items():
        if unit.flgc:
            sum_fed = not unit.delivered and reads_sum(graph, node)
            choose(unit, strategy, shapes[unit.path], batch_size, device, channels_last, sum_fed)
    for chain in chains:
        route(*chain)
    replacements, ops = carry_orders(graph, traced, input_size)
    replacements.update({unit.path: build(unit) for unit in graph.units.values() if unit.changed})
    ops += fuse_sums(graph, traced, replacements)
    replacements.update({path: nn.Identity() for path in graph.folded_bns.values()})
    return replacements, traced, ops


def fold_pairs(model):
    """{path: module} folding every BatchNorm2d that directly follows a conv (FLGC kept, masked),
    following the dataflow; None where the model does not trace."""
    traced = trace(model)
    if traced is None:
        return None
    graph = Graph(model, traced)
    graph.fold_batchnorms()
    replacements = {unit.path: folded_conv(unit.conv, bn) for unit, bn in graph.bn_pairs}
    replacements.update({path: nn.Identity() for path in graph.folded_bns.values()})
    return replacements
