"""Penalties on the hard group structure of FLGConv2d layers, added to the training loss, and the
structure statistics logged per epoch.

Per layer, c_g and n_g are the numbers of input channels and filters whose argmax group is g: the
real, hard structure. Their gradient is that of the softmax column sums (straight-through:
value = hard counts, gradient = d/dlogits of sum_rows softmax(logits / temperature)).

balance: mean over the trainable FLGC layers of
    1/G sum_g [ ((c_g - in/G) / (in/G))^2 + ((n_g - out/G) / (out/G))^2 ]
budget, per-layer target fraction f of the dense layer (default f = 1/G, the uniform cost):
    mean over the trainable FLGC layers of  max(0, sum_g c_g n_g / (f * in * out) - 1)
budget, whole-model target of T MMac:
    max(0, (MMac(model) - T) / (T - fixed)), with MMac(model) = fixed + sum_layers kh kw H W sum_g c_g n_g / 1e6
    and fixed the MMac of every other counted module: the excess of the FLGC layers' MACs over what the
    target leaves them, relative to that allowance (as the per-layer form is).

project_to_budget moves channels and filters until the hard structure meets a whole-model target:
from the exactly uniform start no single move changes sum_g c_g n_g, so the penalty's gradient is 0
there and cannot get under a target below the uniform cost by itself.
"""
import torch

from .layer import flgc_layers

KINDS = ("balance", "budget", "none")


def hard_group_sizes(layer):
    """(input channels per group, filters per group), float tensors of length G whose value is the hard
    count and whose gradient is that of the softmax column sums (straight-through)."""
    sizes = []
    for logits in (layer.input_group_logits, layer.output_group_logits):
        soft = torch.softmax(logits / layer.temperature, dim=1).sum(dim=0)
        groups = logits.detach().argmax(dim=1)
        # counted by comparison, not bincount: no host sync (bincount sizes its output from the data on CUDA)
        hard = (groups[:, None] == torch.arange(layer.groups, device=groups.device)).sum(dim=0).to(soft.dtype)
        sizes.append(hard + (soft - soft.detach()))  # the added term is exactly 0 in value
    return tuple(sizes)


def balance_penalty(layer):
    inputs, filters = hard_group_sizes(layer)
    g = layer.groups
    in_target, out_target = layer.in_channels / g, layer.out_channels / g
    return (((inputs - in_target) / in_target) ** 2 + ((filters - out_target) / out_target) ** 2).mean()


def connections(layer):
    """sum_g c_g n_g of the hard structure, as a tensor with the straight-through gradient."""
    inputs, filters = hard_group_sizes(layer)
    return (inputs * filters).sum()


def budget_penalty(layer, fraction=None):
    """Relative excess of the layer's connections over `fraction` (default 1/G) of the dense layer."""
    fraction = 1.0 / layer.groups if fraction is None else fraction
    return torch.relu(connections(layer) / (fraction * layer.in_channels * layer.out_channels) - 1.0)


def lowering_moves(inputs, filters):
    """The best single move and the best paired move of one layer's sizes (LongTensors c, n of
    length G) as (change of sum_g c_g n_g, kind, a, b), or None where no move lowers it without
    emptying a group. kinds: "input" moves an input channel a->b (change n_b - n_a), "filter" a
    filter a->b (c_b - c_a), "pair" an input channel a->b with a filter b->a (c_a - c_b + n_b - n_a - 2)."""
    c, n = inputs[:, None], filters[:, None]
    off = ~torch.eye(len(inputs), dtype=torch.bool)
    big = torch.iinfo(torch.long).max
    candidates = {"input": torch.where(off & (c > 1), n.T - n, big),
                  "filter": torch.where(off & (n > 1), c.T - c, big),
                  "pair": torch.where(off & (c > 1) & (n.T > 1), c - c.T + n.T - n - 2, big)}
    best = []
    for kinds in (("input", "filter"), ("pair",)):  # a single move changes less of the structure
        for kind in kinds:
            change = candidates[kind]
            flat = int(change.argmin())
            if change.view(-1)[flat] < 0:
                best.append((int(change.view(-1)[flat]), kind, *divmod(flat, len(inputs))))
        if best:
            return min(best)
    return None


def _reassign(logits, source, destination):
    """Move the row of group `source` whose logit is closest to that of `destination` (smallest margin)
    there, by swapping the two logits (its largest goes to `destination`, as the uniform init sets it)."""
    rows = (logits.argmax(dim=1) == source).nonzero().flatten()
    row = rows[(logits[rows, source] - logits[rows, destination]).argmin()]
    logits[row, source], logits[row, destination] = logits[row, destination].clone(), logits[row, source].clone()
    if logits[row].argmax() != destination:  # equal logits: the first index wins the argmax
        logits[row, destination] = torch.nextafter(logits[row, source], torch.tensor(float("inf")))


def apply_move(layer, kind, source, destination):
    if kind in ("input", "pair"):
        _reassign(layer.input_group_logits.data, source, destination)
    if kind == "filter":
        _reassign(layer.output_group_logits.data, source, destination)
    if kind == "pair":
        _reassign(layer.output_group_logits.data, destination, source)
    return 2 if kind == "pair" else 1


@torch.no_grad()
def project_to_fraction(model, fraction=None):
    """Per-layer form of project_to_budget: in every trainable FLGC layer, while sum_g c_g n_g exceeds
    `fraction` (default 1/G) of in * out, make the move that lowers it most (no group emptied).
    Returns the number of input channels and filters moved."""
    moves = 0
    for _, layer in flgc_layers(model, trainable=True):
        limit = (1.0 / layer.groups if fraction is None else fraction) * layer.in_channels * layer.out_channels
        while int(connections(layer)) > limit:
            move = lowering_moves(*layer.group_sizes())
            if move is None:
                break
            moves += apply_move(layer, *move[1:])
    return moves


def group_regularizer(model, kind, target_fraction=None):
    """The penalty of `kind` on `model` (a scalar tensor, 0 without trainable FLGC layers); budget is
    per layer, with target_fraction of the dense layer (default 1/G). The whole-model MMac target is
    flgc.method.budget.regularizer_penalty."""
    if kind not in KINDS:
        raise ValueError(f"unknown regularizer {kind!r}; allowed: {', '.join(KINDS)}")
    layers = [layer for _, layer in flgc_layers(model, trainable=True)]
    if kind == "none" or not layers:
        return torch.zeros(())
    if kind == "budget":
        return torch.stack([budget_penalty(layer, target_fraction) for layer in layers]).mean()
    return torch.stack([balance_penalty(layer) for layer in layers]).mean()


def structure_stats(model):
    """Counts over the FLGC layers of `model` (ints): empty input groups, empty filter groups, dead
    filters (their group has no input channel), unread input channels (their group has no filter)."""
    stats = dict.fromkeys(("empty_input_groups", "empty_filter_groups", "dead_filters", "unread_inputs"), 0)
    for _, layer in flgc_layers(model):
        inputs, filters = layer.group_sizes()
        stats["empty_input_groups"] += int((inputs == 0).sum())
        stats["empty_filter_groups"] += int((filters == 0).sum())
        stats["dead_filters"] += int(filters[inputs == 0].sum())
        stats["unread_inputs"] += int(inputs[filters == 0].sum())
    return stats
