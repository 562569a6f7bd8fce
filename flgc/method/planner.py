"""Planning a grouped convolution as contiguous channel slices, and the channel gather it may need.

Used by the layer (its frozen grouped forward) and by deployment (flgc.deploy); plain torch only.
"""
import torch


def channel_gather(x, index, stride=1):
    """x[:, index] keeping a channels_last tensor channels_last (a gather on its N*H*W x C view);
    with stride, of every stride-th row and column only (what a 1x1 conv of that stride reads).
    Deployed modules use flgc.deploy.modules.channel_gather: the same, through a compiled kernel where one applies."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    if x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing():
        # torch.gather walks the rows once; index_select along dim 1 is slower on this view
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        rows = torch.gather(rows, 1, index.expand(rows.shape[0], -1))
        return rows.view(n, h, w, -1).permute(0, 3, 1, 2)
    return x.index_select(1, index)


class Plan:
    """How to compute y = W h + b (W: out x hidden, zero outside groups) for one strategy.

    layout: hidden channel per compute input position (-1 = zero padding), the order the producer
    must deliver; compute_out: original filter per compute output position (-1 = padding).
    """

    def __init__(self, strategy, layout, compute_out, blocks, groups=None):
        self.strategy, self.layout, self.compute_out, self.blocks, self.groups = (
            strategy, layout, compute_out, blocks, groups)


def _members(gin, gout, groups, order_key):
    in_members = [sorted((gin == g).nonzero().flatten().tolist(), key=order_key) for g in range(groups)]
    out_members = [(gout == g).nonzero().flatten().tolist() for g in range(groups)]
    return in_members, out_members


def _block_plan(in_members, out_members, active, dead):
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


def _padded_plan(in_members, out_members, active, dead):
    """Equal-size groups, padded with zero weights; dead filters join the first group."""
    outs = {g: out_members[g] + (dead if g == active[0] else []) for g in active}
    cmax = max(len(in_members[g]) for g in active)
    omax = max(len(outs[g]) for g in active)
    layout, compute_out = [], []
    for g in active:
        layout += in_members[g] + [-1] * (cmax - len(in_members[g]))
        compute_out += outs[g] + [-1] * (omax - len(outs[g]))
    return Plan("conv", layout, compute_out, None, len(active))


def plan_pointwise(gin, gout, groups, strategy, order_key=None):
    """Plan a grouped conv ('blocks', or 'conv' / 'matmul' / 'native': padded groups) whose input order
    is free (chosen here, delivered by the producer). gin / gout: group of every input channel /
    filter (LongTensors).

    Input channels of groups without filters are left out (pruned); filters of groups without inputs
    output only their bias. order_key(channel) orders the channels inside a group (e.g. by the
    producer's own groups).
    """
    in_members, out_members = _members(gin, gout, groups, order_key)
    active = [g for g in range(groups) if in_members[g] and out_members[g]]
    dead = sorted(o for g in range(groups) if not in_members[g] for o in out_members[g])
    if not active:  # nothing connects: one zero input channel, every output is its bias
        return Plan(strategy, [-1], dead, [(0, 1, 0, len(dead))] if dead else [], 1)
    if strategy == "blocks":
        return _block_plan(in_members, out_members, active, dead)
    plan = _padded_plan(in_members, out_members, active, dead)
    plan.strategy = strategy  # 'conv', 'matmul' or 'native': the same padded groups, computed three ways
    return plan


def take_rows(matrix, index, fill=0.0):
    """matrix[index] with zero (fill) rows where index is -1."""
    index = torch.as_tensor(index, dtype=torch.long)
    out = matrix.new_full((len(index), *matrix.shape[1:]), fill)
    keep = index >= 0
    out[keep] = matrix[index[keep]]
    return out


def index_in(order, channels):
    """Position, in a tensor holding channel order[i] at position i, of each of `channels`
    (-1 = any channel: position 0)."""
    position = {c: i for i, c in enumerate(order) if c >= 0}
    return [position[c] if c >= 0 else 0 for c in channels]


def positions(compute_out, wanted):
    """For every channel of `wanted` (original ids, -1 = any), its position in compute order; None
    when that is the identity (no gather needed)."""
    if list(wanted) == list(compute_out):
        return None
    index = index_in(compute_out, wanted)
    if index == list(range(len(compute_out))):
        return None
    return torch.tensor(index, dtype=torch.long)
