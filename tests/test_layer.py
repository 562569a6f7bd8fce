import pytest
import torch
import torch.nn.functional as F

from flgc import FLGConv2d, hard_assignment
from flgc.engine.config import load, parse_overrides
from flgc.method import flops
from flgc.models import build_model


def set_assignment(layer, input_groups, output_groups):
    """Give the layer logits whose argmax is the given group per input channel / filter."""
    with torch.no_grad():
        layer.input_group_logits.copy_(F.one_hot(torch.tensor(input_groups), layer.groups) * 5.0)
        layer.output_group_logits.copy_(F.one_hot(torch.tensor(output_groups), layer.groups) * 5.0)


def test_mask_is_filters_times_inputs_transposed():
    torch.manual_seed(0)
    layer = FLGConv2d(12, 10, 1, groups=3)
    inputs = F.one_hot(layer.input_group_logits.argmax(1), 3).float()
    filters = F.one_hot(layer.output_group_logits.argmax(1), 3).float()
    assert torch.equal(layer.mask(), filters @ inputs.t())
    assert torch.equal(layer.hard_mask(), filters @ inputs.t())


def test_forward_is_conv_with_masked_weight_and_per_group_convs():
    torch.manual_seed(1)
    layer = FLGConv2d(6, 5, 3, padding=1, groups=3)
    set_assignment(layer, [0, 2, 2, 0, 1, 1], [1, 0, 2, 2, 1])
    x = torch.randn(2, 6, 7, 7)
    mask = torch.tensor([[0, 0, 0, 0, 1, 1], [1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0],
                         [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.float)
    expected = F.conv2d(x, layer.weight * mask[:, :, None, None], padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # the same output from separate convs over each group's channels
    for g in range(3):
        cin = [i for i, v in enumerate([0, 2, 2, 0, 1, 1]) if v == g]
        cout = [o for o, v in enumerate([1, 0, 2, 2, 1]) if v == g]
        part = F.conv2d(x[:, cin], layer.weight[cout][:, cin], padding=1)
        assert torch.allclose(layer(x)[:, cout], part, atol=1e-5)


def test_one_group_is_a_dense_conv():
    layer = FLGConv2d(4, 6, 1, groups=1)
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(layer(x), F.conv2d(x, layer.weight), atol=1e-6)


def test_non_uniform_and_empty_groups():
    layer = FLGConv2d(8, 6, 1, groups=4)  # G=4 does not divide 6: allowed
    set_assignment(layer, [0, 0, 0, 0, 0, 1, 1, 3], [0, 0, 1, 1, 1, 3])
    in_sizes, out_sizes = layer.group_sizes()
    assert in_sizes.tolist() == [5, 2, 0, 1]
    assert out_sizes.tolist() == [2, 3, 0, 1]
    assert layer.connections() == 5 * 2 + 2 * 3 + 0 + 1 * 1
    assert layer.macs(4, 4) == 17 * 16
    assert layer.input_groups().tolist() == [0, 0, 0, 0, 0, 1, 1, 3]
    assert layer.output_groups().tolist() == [0, 0, 1, 1, 1, 3]
    assert layer(torch.randn(1, 8, 4, 4)).shape == (1, 6, 4, 4)


@pytest.mark.parametrize("groups", [0, -1, 9])
def test_bad_group_counts_are_rejected(groups):
    with pytest.raises(ValueError, match="groups"):
        FLGConv2d(8, 16, 1, groups=groups)


def test_eval_output_is_the_hard_structure_whatever_the_temperature():
    torch.manual_seed(2)
    layer = FLGConv2d(16, 16, 1, groups=5).eval()
    x = torch.randn(4, 16, 3, 3)
    inputs, filters = layer.input_group_logits.argmax(1), layer.output_group_logits.argmax(1)
    expected = torch.zeros(4, 16, 3, 3)
    for o in range(16):
        for i in range(16):
            if filters[o] == inputs[i]:
                expected[:, o] += layer.weight[o, i, 0, 0] * x[:, i]
    with torch.no_grad():
        first = layer(x)
        layer.temperature = 0.01
        again = layer(x)
    assert torch.allclose(first, expected, atol=1e-5)
    assert torch.equal(again, first)


def test_straight_through_gradient_is_the_full_softmax_gradient():
    torch.manual_seed(3)
    logits = torch.randn(5, 4, requires_grad=True)
    upstream = torch.randn(5, 4)
    (hard_assignment(logits) * upstream).sum().backward()
    soft_logits = logits.detach().clone().requires_grad_(True)
    (torch.softmax(soft_logits, 1) * upstream).sum().backward()
    assert torch.allclose(logits.grad, soft_logits.grad, atol=1e-6)
    assert (logits.grad != 0).all()


def test_reference_masked_gradient_keeps_only_the_argmax_entry():
    torch.manual_seed(4)
    logits = torch.randn(5, 4, requires_grad=True)
    upstream = torch.randn(5, 4)
    (hard_assignment(logits, gradient="reference_masked") * upstream).sum().backward()
    soft_logits = logits.detach().clone().requires_grad_(True)
    hard = F.one_hot(soft_logits.argmax(1), 4).float()
    (torch.softmax(soft_logits, 1) * upstream * hard).sum().backward()
    assert torch.allclose(logits.grad, soft_logits.grad, atol=1e-6)


def test_gradient_reaches_the_logits_through_the_layer():
    torch.manual_seed(5)
    layer = FLGConv2d(8, 8, 1, groups=2)
    layer(torch.randn(2, 8, 4, 4)).pow(2).sum().backward()
    assert layer.input_group_logits.grad.abs().sum() > 0
    assert layer.output_group_logits.grad.abs().sum() > 0


def test_dense_weight_gradient_keeps_the_output_and_the_logit_gradients_and_trains_absent_weights():
    torch.manual_seed(7)
    x = torch.randn(2, 8, 4, 4)
    masked = FLGConv2d(8, 6, 1, groups=2)
    dense = FLGConv2d(8, 6, 1, groups=2, weight_gradient="dense")
    dense.load_state_dict(masked.state_dict())
    outputs = [layer(x) for layer in (masked, dense)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for y in outputs:
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    for name in ("input_group_logits", "output_group_logits"):
        torch.testing.assert_close(getattr(masked, name).grad, getattr(dense, name).grad)
    absent = masked.hard_mask()[:, :, None, None] == 0
    assert absent.any() and masked.weight.grad[absent].abs().max() == 0
    assert dense.weight.grad[absent].abs().min() > 0  # the weights of absent connections train too
    torch.testing.assert_close(dense.weight.grad[~absent], masked.weight.grad[~absent])
    with pytest.raises(ValueError, match="weight gradient"):
        FLGConv2d(8, 6, 1, groups=2, weight_gradient="sparse")


def _train_toward(target_mask, gradient, steps=200):
    torch.manual_seed(6)
    layer = FLGConv2d(8, 8, 1, groups=2, gradient=gradient)
    start = (layer.input_groups().clone(), layer.output_groups().clone())
    optimizer = torch.optim.SGD([layer.input_group_logits, layer.output_group_logits], lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        ((layer.mask() - target_mask) ** 2).sum().backward()
        optimizer.step()
    return layer, start


def test_assignments_move_toward_a_grouping_the_loss_favours():
    # favoured grouping: channels and filters 0-3 in one group, 4-7 in the other
    halves = torch.tensor([0] * 4 + [1] * 4)
    target = (halves[:, None] == halves[None, :]).float()
    layer, start = _train_toward(target, "straight_through")
    moved = (layer.input_groups() != start[0]).sum() + (layer.output_groups() != start[1]).sum()
    assert moved > 0
    assert torch.equal(layer.hard_mask(), target)


def test_freeze_fixes_the_assignment_and_stops_logit_gradients():
    torch.manual_seed(7)
    layer = FLGConv2d(8, 8, 1, groups=2)
    before = layer.hard_mask().clone()
    layer.freeze()
    layer(torch.randn(2, 8, 3, 3)).sum().backward()
    assert layer.input_group_logits.grad is None and layer.output_group_logits.grad is None
    assert layer.weight.grad is not None
    assert torch.equal(layer.mask(), before)


def test_frozen_grouped_forward_and_gradients_equal_the_masked_ones():
    torch.manual_seed(9)
    layer = FLGConv2d(10, 7, 1, groups=4, bias=True)
    set_assignment(layer, [0, 0, 0, 1, 1, 3, 3, 3, 3, 0], [0, 1, 1, 2, 3, 3, 0])  # group 2: no inputs
    masked = FLGConv2d(10, 7, 1, groups=4, bias=True)
    masked.load_state_dict(layer.state_dict())
    masked.freeze(grouped=False)
    layer.freeze(grouped=True)
    x = torch.randn(3, 10, 5, 5).to(memory_format=torch.channels_last)
    a, b = layer(x), masked(x)
    assert torch.allclose(a, b, atol=1e-5)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, masked.weight.grad, atol=1e-4)
    assert torch.allclose(layer.bias.grad, masked.bias.grad, atol=1e-4)


def reference_mask(layer):
    """The mask as the one-hot product of straight-through assignments: M = T S^T (the former formula)."""
    inputs = hard_assignment(layer.input_group_logits, layer.temperature, layer.gradient)
    filters = hard_assignment(layer.output_group_logits, layer.temperature, layer.gradient)
    return filters @ inputs.t()


@pytest.mark.parametrize("gradient", ["straight_through", "reference_masked"])
@pytest.mark.parametrize("temperature", [1.0, 0.4])
def test_mask_and_its_logit_gradients_equal_the_one_hot_product(gradient, temperature):
    torch.manual_seed(10)
    layer = FLGConv2d(13, 9, 3, padding=1, groups=4, gradient=gradient, init="random", logit_init_std=0.5)
    layer.temperature = temperature
    reference = FLGConv2d(13, 9, 3, padding=1, groups=4, gradient=gradient)
    reference.load_state_dict(layer.state_dict())
    reference.temperature = temperature
    x = torch.randn(2, 13, 5, 5)
    upstream = torch.randn(2, 9, 5, 5)
    (layer(x) * upstream).sum().backward()
    weight = reference.weight * reference_mask(reference)[:, :, None, None]
    (F.conv2d(x, weight, padding=1) * upstream).sum().backward()
    assert torch.allclose(layer.mask(), reference_mask(reference), atol=1e-6)
    for name in ("weight", "input_group_logits", "output_group_logits"):
        ours, theirs = getattr(layer, name).grad, getattr(reference, name).grad
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), name
    assert layer.input_group_logits.grad.abs().sum() > 0


def test_mask_is_exactly_zero_one_in_the_weight_dtype():
    layer = FLGConv2d(8, 8, 1, groups=2).to(torch.bfloat16)
    mask = layer.mask()
    assert mask.dtype == torch.bfloat16 and set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("channels, groups", [((96, 24), 8), ((10, 7), 4), ((960, 320), 8), ((5, 5), 5)])
def test_uniform_init_gives_balanced_groups(channels, groups):
    torch.manual_seed(11)
    layer = FLGConv2d(*channels, 1, groups=groups, logit_init_std=0.1)
    for sizes, count in zip(layer.group_sizes(), channels):
        assert sizes.sum() == count and sizes.max() - sizes.min() <= 1 and sizes.min() >= count // groups


def test_uniform_init_is_the_random_draws_permuted_within_each_row_and_follows_the_seed():
    torch.manual_seed(12)
    layer = FLGConv2d(40, 24, 1, groups=8, logit_init_std=0.1)
    torch.manual_seed(12)
    draws = torch.randn(40, 8) * 0.1
    assert torch.equal(layer.input_group_logits.detach().sort(dim=1).values, draws.sort(dim=1).values)
    torch.manual_seed(12)
    again = FLGConv2d(40, 24, 1, groups=8, logit_init_std=0.1)
    assert torch.equal(again.input_group_logits, layer.input_group_logits)
    torch.manual_seed(13)
    other = FLGConv2d(40, 24, 1, groups=8, logit_init_std=0.1)
    assert not torch.equal(other.input_groups(), layer.input_groups())


def test_random_init_is_the_plain_normal_draw():
    torch.manual_seed(14)
    layer = FLGConv2d(40, 24, 1, groups=8, logit_init_std=0.1, init="random")
    torch.manual_seed(14)
    assert torch.equal(layer.input_group_logits.detach(), torch.randn(40, 8) * 0.1)
    with pytest.raises(ValueError, match="allowed: uniform, random"):
        FLGConv2d(8, 8, 1, groups=2, init="normal")


@pytest.mark.parametrize("seed", [0, 1])
def test_mbv2_flgc8_starts_at_exactly_the_sgc8_cost_with_no_empty_group(seed):
    torch.manual_seed(seed)
    flgc8 = build_model(load("configs/mbv2_flgc8.yaml"))
    sgc8 = build_model(load("configs/mbv2_sgc8.yaml"))
    assert flops.count(flgc8) == flops.count(sgc8)
    assert flops.count(flgc8)[0] == pytest.approx(62.62, abs=0.005)
    for module in flgc8.modules():
        if isinstance(module, FLGConv2d):
            inputs, filters = module.group_sizes()
            assert (inputs == module.in_channels // 8).all() and (filters == module.out_channels // 8).all()
    torch.manual_seed(seed)
    random = build_model(load("configs/mbv2_flgc8.yaml", parse_overrides(["flgc.init=random"])))
    assert flops.count(random)[0] != flops.count(sgc8)[0]
