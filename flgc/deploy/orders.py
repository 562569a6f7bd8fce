"""Channel orders carried across the dataflow: FLGC outputs stay in compute order.

The chains of flgc.deploy.graph cover a tensor read once. An FLGC conv whose output meets a residual
sum, or is read several times, would end in a gather back to the original channel order. Here its
output stays in the conv's compute order (its groups contiguous) and that order travels on:
- unchanged through elementwise ops, channel-wise pooling and a flatten of 1x1 maps;
- folded into the columns of a dense conv or Linear reading it, into the filters of a depthwise conv;
- composed into the input gather of an FLGC conv reading it;
- at a sum of two tensors in different orders, the sum is delivered in the input layout of an FLGC
  conv that reads it, so that conv gathers nothing (PermutedSum); without such a reader it is taken
  in one operand's order with the other's channels scattered into it (PermutedAdd, in place where
  that operand is a fresh tensor read by nothing else, as a conv's output on its way into a
  residual sum is);
- anything else reads the original order again through one gather (ChannelGather).
A ReLU that alone reads such a sum is folded into it (one pass over the sum instead of two). A
PermutedSum whose first operand comes straight from a conv run by the native kernel is fused into
that conv (fuse_sums): the conv's output is summed tile by tile in cache, and where the other
operand is a fresh tensor that nothing reads later, the sum is written over it.

The graph edits are recorded as plain data (ops) so that a deploy spec can replay them on a fresh
trace of the same network: apply_ops.
"""
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..method.planner import index_in, take_rows
from .folding import is_depthwise
from .modules import ChannelGather, Orders, PermutedAdd, PermutedSum

CONTAINER = "channel_orders"
DATAFLOW = "#dataflow"  # the deploy spec's key for the recorded graph edits (not a module path)
ADDS = (operator.add, torch.add)
POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
FLATTEN = (torch.flatten, "flatten")
POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d)


def _padded(order):
    return order is not None and -1 in order


def _called(graph, path):
    return next((n for n in graph.nodes if n.op == "call_module" and n.target == path), None)


def apply_ops(graph, ops):
    """Replay recorded edits on an fx graph: ["gather", source, user, path] makes user read source
    through call_module(path) (one such node per path, placed before its first user); ["add", node,
    path, base] replaces a two-tensor sum by call_module(path)(base operand, other operand); ["iadd", node,
    base] makes it base += other; ["relu", node] drops a ReLU folded into the sum it reads; ["fuse",
    sum, conv] makes the conv compute the sum, conv(its input, the sum's second operand), in the
    sum's place (the conv's call and the single-use steps between it and the sum leave the graph)."""
    nodes = {node.name: node for node in graph.nodes}
    for kind, name, *rest in ops:
        new = _REPLAY[kind](graph, nodes, name, *rest)
        if new is not None:
            nodes[new.name] = new
    return graph


def _replay_relu(graph, nodes, name):
    node = nodes.pop(name)
    node.replace_all_uses_with(node.args[0])
    graph.erase_node(node)


def _replay_fuse(graph, nodes, name, conv_name):
    node, conv = nodes.pop(name), nodes.pop(conv_name)
    with graph.inserting_before(node):
        new = graph.call_module(conv.target, (conv.args[0], node.args[1]))
    node.replace_all_uses_with(new)
    step = node.args[0]
    graph.erase_node(node)
    while step is not conv:  # the single-use steps between the conv and the sum, nearest the sum first
        following, step = step, step.args[0]
        graph.erase_node(nodes.pop(following.name))
    graph.erase_node(conv)
    return new


def _replay_gather(graph, nodes, name, user_name, path):
    source, user = nodes[name], nodes[user_name]
    new = _called(graph, path)
    if new is None:
        with graph.inserting_before(user):
            new = graph.call_module(path, (source,))
    user.replace_input_with(source, new)
    return new


def _replay_add(graph, nodes, name, path, base):
    return _replace_sum(graph, nodes[name], base, lambda operands: graph.call_module(path, operands))


def _replay_iadd(graph, nodes, name, base):
    return _replace_sum(graph, nodes[name], base, lambda operands: graph.call_function(operator.iadd, operands))


def _replace_sum(graph, node, base, call):
    """The sum `node` replaced by call((base operand, other operand)), inserted in its place."""
    operands = (node.args[base], node.args[1 - base])
    with graph.inserting_before(node):
        new = call(operands)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


_REPLAY = {"relu": _replay_relu, "fuse": _replay_fuse, "gather": _replay_gather, "add": _replay_add,
           "iadd": _replay_iadd}


def _shapes(model, graph, input_size):
    """{node: output shape} of graph's nodes on one input (on a copy: the graph itself stays unowned)."""
    copies = {}
    copied = fx.Graph()
    copied.graph_copy(graph, copies)
    with torch.no_grad():
        ShapeProp(fx.GraphModule(model, copied)).propagate(torch.zeros(1, *input_size))
    return {node: tuple(copy.meta["tensor_meta"].shape) for node, copy in copies.items()
            if hasattr(copy.meta.get("tensor_meta"), "shape")}


class _Pass:
    """One pass over the graph: orders[node] is the order (original channel per position) of a tensor
    not in original order."""

    def __init__(self, graph, traced, input_size):
        self.graph, self.traced = graph, traced  # flgc.deploy.graph.Graph, the fx graph it was made from
        self.orders, self.ops, self.modules, self.linears = {}, [], {}, {}
        self.restored = {}  # source node -> path of its ChannelGather
        self.shapes = _shapes(graph.model, traced, input_size) if any(n.target in FLATTEN for n in traced.nodes) else {}

    # ---- helpers
    def _add_module(self, kind, module):
        path = f"{CONTAINER}.{kind}{len(self.modules)}"
        self.modules[path] = module
        return path

    def _fresh(self, node):
        """node's tensor is a conv's fresh output reached through single-use elementwise steps."""
        while len(node.users) == 1:
            if node in self.graph.units:
                return True
            if not self.graph.elementwise(node):
                return False
            node = node.args[0]
        return False

    def _spatial_one(self, node):
        shape = self.shapes.get(node)
        return shape is not None and len(shape) == 4 and shape[2] * shape[3] == 1

    def _edit(self, op):
        self.ops.append(op)
        apply_ops(self.traced, [op])

    def restore(self, source, user):
        """user reads source in original order again (one ChannelGather per source, shared)."""
        if source not in self.restored:
            order = self.orders[source]
            gather = ChannelGather(len(order) - order.count(-1))
            gather.index.copy_(torch.as_tensor(index_in(order, range(gather.index.numel()))))
            self.restored[source] = self._add_module("gather", gather)
        self._edit(["gather", source.name, user.name, self.restored[source]])

    # ---- rules
    def unit(self, node, unit):
        source = node.args[0]
        order = self.orders.get(source)
        if order is not None:
            if unit.flgc and unit.plan.strategy != "dense" and not unit.delivered:
                unit.in_source, unit.changed = order, True
            elif (unit.flgc and not unit.delivered) or (unit.dense and unit.in_order is None):
                unit.in_order, unit.changed = order, True
            elif is_depthwise(unit.conv) and unit.out_order is None:
                unit.out_order, unit.changed = order, True
                self.orders[node] = order
                return
            else:
                self.restore(source, node)
        if unit.free and unit.plan.compute_out != list(range(unit.conv.out_channels)):
            # every filter once, in compute order; -1: a padding filter of padded groups (zero weights)
            unit.out_order, unit.changed = unit.plan.compute_out, True
            self.orders[node] = unit.plan.compute_out

    def linear(self, node, module):
        order = self.orders[node.args[0]]
        new = nn.Linear(len(order), module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            new.weight.copy_(take_rows(module.weight.detach().t(), order).t())
            if module.bias is not None:
                new.bias.copy_(module.bias)
        self.linears[node.target] = new

    def add(self, node):
        """A two-tensor sum: in place where both operands hold one order, else delivered in the order an
        FLGC conv reading it wants (PermutedSum), else in one operand's order (PermutedAdd)."""
        orders = [self.orders.get(operand) for operand in node.args[:2]]
        if orders[0] == orders[1]:
            self._same_order_add(node, orders[0])
            return
        wanted = self._reader_layout(node)
        held = [order or list(range(len(wanted) - wanted.count(-1))) for order in orders] if wanted else None
        if wanted is not None and wanted not in held:
            self._permuted_sum(node, wanted, held)
        else:
            self._permuted_add(node, orders)

    def _same_order_add(self, node, order):
        if order is not None:
            self.orders[node] = order
        for base in (0, 1):  # as the network's own `out += identity` would: no new tensor
            if self._fresh(node.args[base]):
                self._edit(["iadd", node.name, base])
                break

    def _permuted_sum(self, node, wanted, held):
        """The sum delivered in the order an FLGC reader wants: no gather before that reader."""
        first = next((k for k in (0, 1) if self._fresh(node.args[k])), None)  # may be overwritten
        module = PermutedSum(len(wanted), inplace=first is not None, padded=_padded(wanted))
        first = first or 0
        for buffer, k in ((module.left, first), (module.right, 1 - first)):
            buffer.copy_(torch.as_tensor([i if c >= 0 else -1 for i, c in zip(index_in(held[k], wanted), wanted)]))
        path = self._add_module("sum", module)
        self._edit(["add", node.name, path, first])
        self.orders[_called(self.traced, path)] = wanted

    def _permuted_add(self, node, orders):
        """The sum in one operand's order (the base), the other's channels scattered into it."""
        # padding channels of the other operand go onto a padding channel of the base: it must have one
        allowed = [k for k in (0, 1) if _padded(orders[k]) or not _padded(orders[1 - k])]
        fresh = [k for k in allowed if self._fresh(node.args[k])]
        base = (fresh or [k for k in allowed if orders[k] is not None])[0]
        base_order, other_order = orders[base], orders[1 - base]
        if base_order is None:
            base_order = list(range(len(other_order)))
        if other_order is None:
            other_order = list(range(len(base_order) - base_order.count(-1)))
        module = PermutedAdd(len(other_order), len(base_order), inplace=bool(fresh))
        index = index_in(base_order, other_order)
        if _padded(other_order):
            index = [i if c >= 0 else base_order.index(-1) for i, c in zip(index, other_order)]
        module.index.copy_(torch.as_tensor(index))
        module.inverse.copy_(torch.as_tensor(index_in(other_order, base_order)))
        path = self._add_module("add", module)
        self._edit(["add", node.name, path, base])  # node leaves the graph
        if orders[base] is not None:
            self.orders[_called(self.traced, path)] = base_order

    def _reader_layout(self, node):
        """The input layout of an FLGC conv that reads node (through elementwise ops) and would gather
        it, holding each of node's channels once (-1: padding); or None."""
        for user in node.users:
            unit = self.graph.units.get(user)
            if unit is not None and unit.flgc and unit.plan.strategy != "dense" and not unit.delivered:
                layout = unit.plan.layout
                if sorted(c for c in layout if c >= 0) == list(range(unit.conv.in_channels)):
                    return layout
            elif unit is None and self.graph.elementwise(user):
                found = self._reader_layout(user)
                if found is not None:
                    return found
        return None

    def fold_relus(self):
        """A ReLU that is the only reader of a PermutedAdd or PermutedSum runs inside it."""
        for path, module in self.modules.items():
            node = _called(self.traced, path) if isinstance(module, (PermutedAdd, PermutedSum)) else None
            user = next(iter(node.users)) if node is not None and len(node.users) == 1 else None
            if user is not None and self._relu(user) and user.args[0] is node:
                module.relu = True
                self._edit(["relu", user.name])

    def _relu(self, node):
        if node.op == "call_module":
            return isinstance(self.graph.module(node), nn.ReLU) and len(node.args) == 1 and not node.kwargs
        return node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_) and len(node.args) == 1 \
            and set(node.kwargs) <= {"inplace"}

    @staticmethod
    def _sum(node):
        return node.op == "call_function" and node.target in ADDS and len(node.args) == 2 and not node.kwargs \
            and all(isinstance(a, fx.Node) for a in node.args)

    def visit(self, node):
        graph, ordered = self.graph, [n for n in node.all_input_nodes if n in self.orders]
        if not ordered and node not in graph.units and not self._sum(node):
            return
        module = graph.module(node) if node.op == "call_module" else None
        single = node.op == "call_module" and graph.calls.get(node.target) == 1
        plain = len(node.args) >= 1 and node.args[0] in ordered and not any(
            isinstance(a, fx.Node) for a in node.args[1:]) and not any(isinstance(v, fx.Node) for v in node.kwargs.values())
        if node in graph.units:
            self.unit(node, graph.units[node])
        elif plain and _passes(graph, node) and (
                node.target not in FLATTEN or (node.args[1:] == (1,) and self._spatial_one(node.args[0]))):
            self.orders[node] = self.orders[node.args[0]]
        elif plain and single and isinstance(module, nn.Linear) and len(node.args) == 1:
            self.linear(node, module)
        elif self._sum(node):
            self.add(node)
        else:
            for source in ordered:
                self.restore(source, node)


def _passes(graph, node):
    """node keeps its input's channel order (elementwise, folded BN, channel-wise pooling, flatten)."""
    module = graph.module(node) if node.op == "call_module" else None
    return graph.elementwise(node) or isinstance(module, POOL_MODULES) or node.target in POOL_FUNCTIONS + FLATTEN


def reads_sum(graph, node):
    """node's input comes from a two-tensor sum through elementwise ops: a sum of differently ordered
    tensors may be delivered in node's input layout (PermutedSum)."""
    source = node.args[0] if node.args else None
    while isinstance(source, fx.Node) and graph.elementwise(source) and source.args:
        source = source.args[0]
    return isinstance(source, fx.Node) and _Pass._sum(source)


def worth_carrying(graph, node):
    """Whether the output of node reaches (through order-keeping ops) a reader that can take it in
    another order: a conv, a Linear or a sum. Otherwise carrying it would only end in a gather."""
    for user in node.users:
        module = graph.module(user) if user.op == "call_module" else None
        if user in graph.units or isinstance(module, nn.Linear) or _Pass._sum(user):
            return True
        if _passes(graph, user) and worth_carrying(graph, user):
            return True
    return False


def _through_identities(graph, node):
    """The conv (unit node) whose output reaches node through single-use folded BNs and Identity
    modules, when that conv's output has no other reader; else None."""
    while node not in graph.units and len(node.users) == 1 and (
            node in graph.folded_bns or isinstance(graph.module(node), nn.Identity)):
        node = node.args[0]
    return node if node in graph.units and len(node.users) == 1 else None


def _overwritable(graph, node, writer, fresh, fused, order):
    """node's tensor is fresh (made by a conv or by a node in `fresh`, through single-use elementwise
    steps) and every other reader of it is a conv (a unit or a `fused` call: both only read their
    inputs) that runs before `writer` (order: position of each node): writer may write over it."""
    if any(user is not writer and (user not in graph.units and user not in fused or order[user] > order[writer])
           for user in node.users):
        return False
    source = node
    while source not in graph.units and source not in fresh:
        if not (graph.elementwise(source) and source.args and len(source.args[0].users) == 1):
            return False
        source = source.args[0]
    return True


def fuse_sums(graph, traced, modules):
    """Fuse each PermutedSum into the native conv whose output is its first operand (see
    _through_identities), editing `traced` and `modules` ({path: module to install}: the sum moves
    into the conv). Then, with every fused conv in its final place in the graph, let each write over
    its sum's other operand where that may be overwritten. Returns the recorded edits."""
    ops, fused = [], {}  # fused: the new call node -> its conv module
    fresh = {_called(traced, path) for path, module in modules.items() if isinstance(module, (PermutedAdd, PermutedSum))}
    for path, module in list(modules.items()):
        node = _called(traced, path) if isinstance(module, PermutedSum) else None
        conv_node = _through_identities(graph, node.args[0]) if node is not None else None
        conv = modules.get(graph.units[conv_node].path) if conv_node is not None else None
        if not (getattr(conv, "native", False) and conv.out_index is None):
            continue
        conv.fuse(module)
        del modules[path]
        op = ["fuse", node.name, conv_node.name]
        ops.append(op)
        apply_ops(traced, [op])
        fresh.discard(node)
        fused[_called(traced, graph.units[conv_node].path)] = conv
    fresh.update(fused)
    order = {n: k for k, n in enumerate(traced.nodes)}
    for node, conv in fused.items():
        source, other = node.args
        conv.overwrite = source is not other and _overwritable(graph, other, node, fresh, fused, order)
    return ops


def carry_orders(graph, traced, input_size):
    """Propagate FLGC compute orders through `traced` (edited in place); sets the units' in/out orders.
    Returns ({path: module} to install, in install order, with their container first; the recorded ops)."""
    state = _Pass(graph, traced, input_size)
    for node in list(traced.nodes):
        state.visit(node)
    state.fold_relus()
    if not state.modules and not state.linears:  # nothing reordered: the network's own forward stays
        return {}, []
    modules = {CONTAINER: Orders(), **state.modules, **state.linears} if state.modules else dict(state.linears)
    return modules, state.ops
