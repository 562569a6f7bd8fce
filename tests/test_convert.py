"""flgc.convert_model on any network, and the generic (torch.fx) deployment of the result."""
import pytest
import torch
import torch.nn as nn
import torchvision
from helpers import TOLERANCE, max_difference, randomise
from yardsticks import assign_balanced

import flgc
from flgc import FLGConv2d, deploy
from flgc.deploy import BlockPointwise, GroupedConv
from flgc.engine.training import assignments, reassignments
from flgc.method import flops
from flgc.models import MobileNetV2


def torchvision_model(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None)


def pointwise(model):
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
            and m.in_channels % 8 == 0 and m.out_channels % 8 == 0}


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "regnet_y_400mf", "ours"])
def test_convert_replaces_the_chosen_convs_keeping_weights_and_geometry(name):
    model = MobileNetV2() if name == "ours" else torchvision_model(name)
    chosen = pointwise(model)
    assert chosen
    converted = flgc.convert_model(model, groups=8)
    assert converted is model
    for path, conv in chosen.items():
        layer = model.get_submodule(path)
        assert isinstance(layer, FLGConv2d) and layer.groups == 8
        assert torch.equal(layer.weight, conv.weight)
        assert (layer.stride, layer.padding, layer.dilation) == (conv.stride, conv.padding, conv.dilation)
    assert sum(isinstance(m, FLGConv2d) for m in model.modules()) == len(chosen)


def test_one_group_computes_what_the_network_computed():
    model = randomise(torchvision_model("resnet50"), 0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        after = flgc.convert_model(model, groups=1, select=lambda name, conv: conv.kernel_size != (7, 7))(x)
    assert sum(isinstance(m, FLGConv2d) for m in model.modules()) == 52  # every conv but the stem
    assert torch.allclose(before, after, atol=1e-5)


def test_select_that_flgc_cannot_express_is_refused():
    model = torchvision_model("regnet_y_400mf")
    with pytest.raises(ValueError, match="groups=1"):
        flgc.convert_model(model, select=lambda name, conv: conv.groups > 1)


def test_regularizer_and_reassignment_tracking_work_on_the_result():
    model = flgc.convert_model(torchvision_model("resnet50"), groups=8, init="random")
    penalty = flgc.group_regularizer(model, "balance")
    penalty.backward()
    layers = [m for m in model.modules() if isinstance(m, FLGConv2d)]
    assert float(penalty.detach()) > 0 and all(m.input_group_logits.grad is not None for m in layers)
    before = assignments(model)
    with torch.no_grad():
        layers[0].input_group_logits[:3] = -layers[0].input_group_logits[:3] + 100 * nn.functional.one_hot(
            (layers[0].input_groups()[:3] + 1) % 8, 8)
    changed = reassignments(before, assignments(model))
    assert sum(v[0] for v in changed.values()) == 3 and len(changed) == len(layers)


def test_flop_count_is_that_of_the_learned_structure():
    size = (3, 64, 64)
    dense = torchvision_model("resnet50")
    dense_macs = {name: macs for name, _, macs in flops.module_macs(dense, size)}
    pointwise_macs = sum(dense_macs[name] for name in pointwise(dense))
    converted = assign_balanced(flgc.convert_model(torchvision_model("resnet50"), groups=8))
    mflops, params = flops.count(converted, size)
    assert mflops * 1e6 == pytest.approx(sum(dense_macs.values()) - pointwise_macs * 7 / 8)
    assert mflops < flops.count(dense, size)[0]


# ResNet-50 under each forced strategy is the slow suite's; the fast one keeps auto (and MobileNetV2's two)
@pytest.mark.parametrize("name, strategy", [pytest.param("resnet50", s, marks=pytest.mark.slow)
                                            for s in ("conv", "blocks", "matmul")]
                         + [("resnet50", "auto"), ("mobilenet_v2", "conv"), ("mobilenet_v2", "auto")])
def test_deployed_equals_the_training_form_with_non_uniform_groups(name, strategy):
    torch.manual_seed(1)
    model = randomise(flgc.convert_model(torchvision_model(name), groups=8, logit_init_std=1.0, init="random"), 2)
    sizes = {tuple(int(s) for s in m.group_sizes()[0]) for m in model.modules() if isinstance(m, FLGConv2d)}
    assert any(len(set(s)) > 1 for s in sizes)  # non-uniform structures
    deployed = deploy.deploy_model(model, strategy=strategy, input_size=(3, 32, 32))
    assert not any(isinstance(m, (FLGConv2d, nn.BatchNorm2d)) for m in deployed.modules())
    assert max_difference(model, deployed, torch.randn(2, 3, 32, 32)) <= TOLERANCE


def test_permutations_fold_into_the_neighbouring_dense_convs():
    """ResNet-50: conv3 reads conv2's output in its group order and conv1's output is read by conv2
    in conv1's compute order: neither gathers. conv1 reads the residual sum in its own group order
    (the sum delivers it so), except in the first block, which reads the stem's output."""
    torch.manual_seed(0)
    model = randomise(flgc.convert_model(torchvision_model("resnet50"), groups=8, logit_init_std=1.0, init="random"), 3)
    deployed = deploy.deploy_model(model, strategy="conv", input_size=(3, 32, 32))
    blocks = [name for name, m in model.named_modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(blocks) == 16
    for name in blocks:  # the deployed model is an fx.GraphModule: its blocks are plain containers
        conv1, conv3 = deployed.get_submodule(f"{name}.conv1"), deployed.get_submodule(f"{name}.conv3")
        assert isinstance(conv3, GroupedConv) and conv3.in_index is None
        assert isinstance(conv1, GroupedConv) and conv1.out_index is None
        assert (conv1.in_index is not None) == (name == blocks[0])


def test_rebuild_from_spec_and_count_the_deployed_form():
    torch.manual_seed(0)
    model = randomise(flgc.convert_model(torchvision_model("resnet50"), groups=8, logit_init_std=1.0, init="random"), 4)
    deployed = deploy.deploy_model(model, strategy="blocks", input_size=(3, 32, 32))
    assert any(isinstance(m, BlockPointwise) for m in deployed.modules())
    fresh = flgc.convert_model(torchvision_model("resnet50"), groups=8)
    rebuilt = deploy.rebuild(fresh, deployed.deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), deployed(x), atol=1e-6)
    deployed_macs, _ = flops.count(deployed, (3, 32, 32))
    assert deployed_macs < flops.count(torchvision_model("resnet50"), (3, 32, 32))[0]


def test_our_mobilenet_converted_everywhere_deploys_exactly():
    """Expand, projection, shortcut and last 1x1 convs all FLGC: the inverted residual rewrite and
    the generic path together."""
    torch.manual_seed(0)
    model = randomise(flgc.convert_model(MobileNetV2(), groups=8, logit_init_std=1.0, init="random"), 5)
    deployed = deploy.deploy_model(model, strategy="auto")
    assert not any(isinstance(m, (FLGConv2d, nn.BatchNorm2d)) for m in deployed.modules())
    assert max_difference(model, deployed, torch.randn(2, 3, 32, 32)) <= TOLERANCE
