"""Channel orders carried across the dataflow (flgc.deploy.orders): FLGC outputs stay in compute order,
residual sums are delivered in the order an FLGC reader wants (else in one operand's order), and the
original order returns only where needed."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from helpers import TOLERANCE, max_difference, randomise

import flgc
from flgc import deploy
from flgc.deploy import ChannelGather, PermutedAdd, PermutedSum, export


def gathered_sum(base, other, module):
    return base + other[:, module.inverse]


@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("channels_last", "channels_last"),
                                     ("channels_last", "contiguous")])
@pytest.mark.parametrize("inplace", [False, True])
def test_permuted_add_is_the_sum_in_the_base_operands_order(layouts, inplace):
    torch.manual_seed(0)
    module = PermutedAdd(12, inplace=inplace)
    module.index.copy_(torch.randperm(12))
    module.inverse.copy_(torch.argsort(module.index))
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    base, other = (torch.randn(3, 12, 5, 4).contiguous(memory_format=formats[f]) for f in layouts)
    expected = gathered_sum(base, other, module)
    kept = base.clone()
    with torch.no_grad():
        out = module(base, other)
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out.data_ptr() == base.data_ptr()) == inplace  # a fresh tensor unless told to reuse base
    if not inplace:
        assert torch.equal(base, kept)


def test_permuted_add_keeps_autograd_working():
    module = PermutedAdd(6)
    module.index.copy_(torch.tensor([2, 0, 1, 5, 3, 4]))
    module.inverse.copy_(torch.argsort(module.index))
    base, other = torch.randn(2, 6, 3, 3, requires_grad=True), torch.randn(2, 6, 3, 3, requires_grad=True)
    module(base, other).square().sum().backward()
    assert torch.allclose(other.grad, 2 * (base + other[:, module.inverse])[:, module.index])


def random_flgc(model, seed, groups=8):
    torch.manual_seed(seed)
    return randomise(flgc.convert_model(model, groups=groups, logit_init_std=1.0, init="random"), seed).eval()


def test_resnet50_sums_residuals_in_the_next_blocks_order_without_gathers():
    torch.manual_seed(0)
    model = random_flgc(torchvision.models.resnet50(weights=None), 3)
    deployed = deploy.deploy_model(model, strategy="conv", input_size=(3, 32, 32))
    modules = list(deployed.modules())
    assert not any(getattr(m, "out_index", None) is not None for m in modules)
    sums = [m for m in modules if isinstance(m, PermutedSum)]
    adds = [m for m in modules if isinstance(m, PermutedAdd)]
    # blocks 1-15 deliver their sum in the input layout of the next block's conv1; the last one,
    # read by the pooling and fc, is taken in place on conv3's fresh output; every block's ReLU folded in
    assert len(sums) == 15 and len(adds) == 1 and adds[0].inplace
    assert all(m.relu and m.inplace for m in sums + adds)  # written over conv3's (or a downsample's) fresh output
    readers = [m for m in modules if getattr(m, "in_index", None) is not None]
    assert len(readers) == 1 + 4  # the first conv1 (reads the stem) and the 4 downsamples gather
    assert not any(isinstance(m, ChannelGather) for m in deployed.channel_orders.children())  # nothing restored
    assert not torch.equal(deployed.fc.weight, model.fc.weight)  # the last order folded into fc's columns
    assert max_difference(model, deployed, torch.randn(2, 3, 32, 32)) <= TOLERANCE


class Branchy(nn.Module):
    """FLGC outputs meeting a sum, a depthwise conv, another FLGC, a concatenation and a Linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.a, self.bn_a = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.bn_a(self.a(x)) + x  # FLGC output (compute order) + original order
        z = self.depthwise(F.relu(y))
        w = self.b(y)
        joined = torch.cat([z, w, y], 1)  # an op orders do not pass: the original order comes back
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(joined, 1), 1))


@pytest.mark.parametrize("strategy", ["conv", "blocks", "auto"])
def test_orders_pass_through_sums_and_neighbours_and_come_back_where_needed(strategy):
    model = random_flgc(Branchy(), 4, groups=4)
    deployed = deploy.deploy_model(model, strategy=strategy, input_size=(3, 8, 8))
    if strategy != "auto":  # auto may time dense kernels faster on layers this small: no orders then
        assert any(isinstance(m, PermutedSum) for m in deployed.modules())  # y is read by FLGC b
        assert any(isinstance(m, ChannelGather) for m in deployed.channel_orders.children())
    assert max_difference(model, deployed, torch.randn(3, 3, 8, 8)) <= TOLERANCE


def test_rebuilt_from_the_spec_and_exported_it_computes_the_same():
    model = random_flgc(Branchy(), 5, groups=4)
    deployed = deploy.deploy_model(model, strategy="blocks", input_size=(3, 8, 8))
    rebuilt = deploy.rebuild(flgc.convert_model(Branchy(), groups=4), deployed.deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(rebuilt(x), expected, atol=TOLERANCE)
    json.dumps(deployed.deploy_spec)  # plain data, as checkpoints store it
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(export.onnx_bytes(deployed, 2, (3, 8, 8)), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": x.numpy()})[0]
    assert float((torch.from_numpy(out) - expected).abs().max()) <= TOLERANCE


class TwoHeads(nn.Module):
    """The network's output is the sum of two FLGC convs' outputs, held in two compute orders."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 16, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


@pytest.mark.parametrize("strategy", ["conv", "blocks"])
def test_a_sum_that_ends_the_network_is_gathered_back_to_the_original_order(strategy):
    model = random_flgc(TwoHeads(), 6, groups=4)
    deployed = deploy.deploy_model(model, strategy=strategy, input_size=(8, 4, 4))
    assert [type(m) for m in deployed.channel_orders.children()] == [PermutedAdd, ChannelGather]
    assert max_difference(model, deployed, torch.randn(2, 8, 4, 4)) <= TOLERANCE
