"""Deployed models must equal the training model's eval outputs (fp32, max |diff| <= 1e-4)."""
import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCE, max_difference, randomise
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flgc import FLGConv2d, deploy
from flgc.deploy import BlockPointwise, GroupedConv
from flgc.method import flops
from flgc.models import MobileNetV2
from flgc.models.mobilenetv2 import InvertedResidual
from flgc.models.pointwise import pointwise_conv


def assign(layer, inputs, filters):
    with torch.no_grad():
        layer.input_group_logits.copy_(nn.functional.one_hot(torch.tensor(inputs), layer.groups) * 3.0)
        layer.output_group_logits.copy_(nn.functional.one_hot(torch.tensor(filters), layer.groups) * 3.0)


@pytest.mark.parametrize("kind, where, strategy", [
    ("dense", "project", "auto"), ("group", "project", "auto"), ("group", "both", "conv"),
    ("flgc", "project", "blocks"), ("flgc", "project", "conv"), ("flgc", "project", "matmul"), ("flgc", "both", "auto"),
    ("flgc", "expand", "blocks")])
def test_whole_network_equality(kind, where, strategy):
    torch.manual_seed(0)
    model = randomise(MobileNetV2(pointwise=kind, where=where, logit_init_std=1.0), 1)
    deployed = deploy.deploy_model(model, strategy=strategy)
    assert not any(isinstance(m, (FLGConv2d, nn.BatchNorm2d)) for m in deployed.modules())
    assert max_difference(model, deployed, torch.randn(3, 3, 32, 32)) <= TOLERANCE


@st.composite
def block_structures(draw):
    cin = draw(st.integers(2, 12))
    cout = draw(st.sampled_from([cin, draw(st.integers(2, 12))]))
    expansion = draw(st.sampled_from([1, 2, 3]))
    hidden = cin * expansion
    where = draw(st.sampled_from(["project", "both", "expand"] if expansion > 1 else ["project"]))
    groups = draw(st.integers(1, min(hidden, cout, cin if where != "project" else hidden, 5)))
    stride = draw(st.sampled_from([1, 2]))
    strategy = draw(st.sampled_from(["blocks", "conv", "matmul", "auto"]))
    # skewed draws make empty groups common
    pick = st.integers(0, groups - 1) if draw(st.booleans()) else st.sampled_from([0, groups - 1])
    proj = (draw(st.lists(pick, min_size=hidden, max_size=hidden)), draw(st.lists(pick, min_size=cout, max_size=cout)))
    expand = (draw(st.lists(pick, min_size=cin, max_size=cin)), draw(st.lists(pick, min_size=hidden, max_size=hidden)))
    return cin, cout, expansion, where, groups, stride, strategy, proj, expand, draw(st.integers(0, 10**6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_structures())
@example((2, 2, 1, "project", 2, 1, "dense", ([0, 0], [0, 0]), ([0, 0], [0, 0]), 0))  # G == channels
def test_random_non_uniform_structures_with_empty_groups(structure):
    cin, cout, expansion, where, groups, stride, strategy, proj, expand, seed = structure
    torch.manual_seed(seed)
    flgc = lambda i, o: pointwise_conv(i, o, "flgc", groups)  # noqa: E731
    dense = lambda i, o: pointwise_conv(i, o, "dense")  # noqa: E731
    block = InvertedResidual(cin, cout, stride, expansion,
                             flgc if where in ("expand", "both") else dense,
                             flgc if where in ("project", "both") else dense)
    layers = list(block.conv)
    if where in ("project", "both"):
        assign(layers[-2], *proj)
    if where in ("expand", "both"):
        assign(layers[0], *expand)
    model = randomise(nn.Sequential(block), seed)
    deployed = deploy.deploy_model(model, strategy=strategy, input_size=(cin, 6, 6))
    assert max_difference(model, deployed, torch.randn(2, cin, 6, 6)) <= TOLERANCE


def test_unused_inputs_are_pruned_with_their_producers():
    torch.manual_seed(0)
    block = InvertedResidual(4, 4, 1, 2, lambda i, o: pointwise_conv(i, o, "dense"),
                             lambda i, o: pointwise_conv(i, o, "flgc", 2))
    # hidden channels 0-5 in group 0, 6-7 in group 1; every filter in group 0: group 1 feeds nothing
    assign(block.conv[6], [0] * 6 + [1] * 2, [0] * 4)
    model = randomise(nn.Sequential(block), 3)
    deployed = deploy.deploy_model(model, strategy="blocks", input_size=(4, 5, 5))
    expand, depthwise = deployed[0].conv[0], deployed[0].conv[2]
    assert expand.out_channels == 6 and depthwise.in_channels == 6
    assert max_difference(model, deployed, torch.randn(2, 4, 5, 5)) <= TOLERANCE
    macs, _ = flops.count(deployed, (4, 5, 5))
    dense_macs, _ = flops.count(deploy.deploy_model(randomise(nn.Sequential(InvertedResidual(
        4, 4, 1, 2, lambda i, o: pointwise_conv(i, o, "dense"), lambda i, o: pointwise_conv(i, o, "dense"))), 3),
        input_size=(4, 5, 5)), (4, 5, 5))
    assert macs < dense_macs


def test_projection_permutation_is_folded_not_gathered():
    torch.manual_seed(0)
    model = randomise(MobileNetV2(pointwise="flgc", logit_init_std=1.0), 2)
    deployed = deploy.deploy_model(model, strategy="blocks")
    for block in list(deployed.features)[2:-1]:  # t=6 blocks: expand conv produces the group order
        assert isinstance(block.conv[0], nn.Conv2d) and isinstance(block.conv[-1], BlockPointwise)
        assert block.conv[-1].in_index is None


def test_generic_flgc_any_kernel():
    torch.manual_seed(0)
    layer = FLGConv2d(6, 5, 3, padding=1, stride=2, groups=3)
    assign(layer, [0, 0, 2, 2, 2, 0], [1, 0, 0, 2, 2])
    model = randomise(nn.Sequential(layer, nn.BatchNorm2d(5), nn.ReLU6()), 4)
    deployed = deploy.deploy_model(model, strategy="conv", input_size=(6, 7, 7))
    assert isinstance(deployed[0], GroupedConv)
    assert max_difference(model, deployed, torch.randn(2, 6, 7, 7)) <= TOLERANCE


def test_rebuild_from_spec_round_trip():
    torch.manual_seed(0)
    model = randomise(MobileNetV2(pointwise="flgc", where="both", logit_init_std=1.0), 5)
    deployed = deploy.deploy_model(model)
    rebuilt = deploy.rebuild(MobileNetV2(pointwise="flgc", where="both"), deployed.deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # kernels may differ with the weights' memory layout: float rounding only
        assert torch.allclose(rebuilt(x), deployed(x), atol=1e-6)


@pytest.mark.parametrize("strategy, layout", [("blocks", torch.channels_last), ("conv", torch.channels_last),
                                              ("matmul", torch.contiguous_format)])
@pytest.mark.parametrize("half", ["autocast", "bfloat16"])
def test_deployed_runs_in_bfloat16(strategy, layout, half):
    torch.manual_seed(0)
    model = randomise(MobileNetV2(pointwise="flgc", where="both", logit_init_std=1.0), 6)
    nn.init.normal_(model.classifier.weight)  # logits of order 10, so the tolerance means something
    deployed = deploy.deploy_model(model, strategy=strategy).to(memory_format=layout)
    x = torch.randn(2, 3, 32, 32).to(memory_format=layout)
    with torch.no_grad():
        reference = model(x)
        if half == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = deployed(x)
        else:
            out = deployed.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert float((out.float() - reference).abs().max()) <= 0.02 * float(reference.abs().max())


def test_deployment_times_on_the_device_it_targets(monkeypatch):
    from flgc.deploy import timing
    devices = []
    monkeypatch.setattr(timing, "_seconds_once", lambda module, x: devices.append(x.device.type) or 0.0)
    torch.manual_seed(0)
    deployed = deploy.deploy_model(randomise(MobileNetV2(pointwise="flgc"), 0), device="meta")
    assert devices and set(devices) == {"meta"}
    assert next(deployed.parameters()).device.type == "meta"


def test_matmul_kernel_is_a_batched_product_and_round_trips():
    torch.manual_seed(0)
    model = randomise(MobileNetV2(pointwise="flgc", logit_init_std=1.0), 7)
    deployed = deploy.deploy_model(model, strategy="matmul")
    grouped = [m for m in deployed.modules() if isinstance(m, GroupedConv)]
    assert grouped and all(m.matmul and m.spec()["matmul"] for m in grouped)
    rebuilt = deploy.rebuild(MobileNetV2(pointwise="flgc"), deployed.deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    assert all(m.matmul for m in rebuilt.modules() if isinstance(m, GroupedConv))
    assert max_difference(model, rebuilt, torch.randn(2, 3, 32, 32)) <= TOLERANCE


def test_grouped_matmul_counts_the_macs_of_the_conv_it_replaces():
    from flgc.deploy.modules import GroupedConv
    from flgc.method import flops
    counts = {}
    for matmul in (False, True):
        model = nn.Sequential(GroupedConv(64, 64, 64, 64, 8, matmul=matmul))
        counts[matmul] = sum(macs for _, _, macs in flops.module_macs(model, input_size=(64, 8, 8)))
    assert counts[True] == counts[False] == 8 * 8 * 64 * (64 // 8 + 1)
