import pytest
import torch
from ptflops import get_model_complexity_info

from flgc import FLGConv2d, config, flops
from flgc.builders import build_model
from flgc.models import MobileNetV2


def build(path):
    torch.manual_seed(0)
    return build_model(config.load(path))


@pytest.mark.parametrize("name, mmac, params", [("mbv2_baseline", 94.99, 2_295_834),
                                                ("mbv2_sgc8", 62.62, 1_453_034)])
def test_reference_counts(name, mmac, params):
    model = build(f"configs/{name}.yaml")
    got_mmac, got_params = flops.count(model)
    assert round(got_mmac, 2) == mmac
    assert got_params == params
    # our per-module count is ptflops's own (module hooks, functional ops not counted)
    macs, ptflops_params = get_model_complexity_info(model, (3, 32, 32), print_per_layer_stat=False,
                                                     as_strings=False, backend="pytorch",
                                                     backend_specific_config={"count_functional": False})
    assert macs == round(got_mmac * 1e6) and ptflops_params == params


def test_flgc8_counts_its_hard_structure():
    model = build("configs/mbv2_flgc8.yaml")
    layers = [m for m in model.modules() if isinstance(m, FLGConv2d)]
    assert len(layers) == 17
    dense_mmac, _ = flops.count(MobileNetV2())
    expected = dense_mmac * 1e6
    for name, module, macs in flops.module_macs(model):
        if isinstance(module, FLGConv2d):
            in_sizes, out_sizes = module.group_sizes()
            assert macs == int((in_sizes * out_sizes).sum()) * macs // module.connections()
            expected -= module.in_channels * module.out_channels * macs // module.connections()
            expected += macs
    assert flops.count(model)[0] == pytest.approx(expected / 1e6)
    # a random initial structure is close to, not exactly, the uniform budget
    assert 58 < flops.count(model)[0] < 68
    # skewing one layer's groups changes the count
    with torch.no_grad():
        layers[-1].input_group_logits[:, 0] += 100
        layers[-1].output_group_logits[:, 0] += 100
    in_c, out_c = layers[-1].in_channels, layers[-1].out_channels
    assert layers[-1].connections() == in_c * out_c


@pytest.mark.parametrize("kind, where", [("dense", "project"), ("group", "project"), ("flgc", "project"),
                                         ("flgc", "both"), ("group", "expand")])
def test_shapes(kind, where):
    model = MobileNetV2(pointwise=kind, where=where)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_expand_and_both_count_fewer_macs():
    both, _ = flops.count(MobileNetV2(pointwise="group", where="both"))
    expand, _ = flops.count(MobileNetV2(pointwise="group", where="expand"))
    project, _ = flops.count(MobileNetV2(pointwise="group", where="project"))
    assert both < expand < 94.99 and both < project


def test_architecture_details():
    model = MobileNetV2()
    blocks = list(model.features)[1:-1]
    assert len(blocks) == 17
    # 1x1 conv shortcut exactly where a stride-1 block changes width
    shortcuts = [i for i, b in enumerate(blocks, 1) if not isinstance(b.shortcut, torch.nn.Identity)]
    assert shortcuts == [1, 2, 11, 17]
    assert [b.residual for b in blocks].count(False) == 3  # the stride-2 blocks
