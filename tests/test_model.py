import pytest
import torch
from ptflops import get_model_complexity_info

from flgc import FLGConv2d
from flgc.engine import config
from flgc.method import flops
from flgc.models import MobileNetV2, build_model


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


def connections_from_logits(layer):
    """(filter, input channel) pairs in one group, from the argmax of the logits, pair by pair."""
    inputs = layer.input_group_logits.argmax(1).tolist()
    filters = layer.output_group_logits.argmax(1).tolist()
    return sum(1 for o in filters for i in inputs if o == i)


def expected_flgc_mmac(model, dense_macs):
    """The dense network's ptflops count with each FLGC conv scaled by its share of connections."""
    total = sum(dense_macs.values())
    for name, layer in model.named_modules():
        if isinstance(layer, FLGConv2d):
            share = connections_from_logits(layer) / (layer.in_channels * layer.out_channels)
            total += dense_macs[name] * share - dense_macs[name]
    return total / 1e6


def test_flgc8_counts_its_hard_structure():
    model = build("configs/mbv2_flgc8.yaml")
    layers = [m for m in model.modules() if isinstance(m, FLGConv2d)]
    assert len(layers) == 17
    dense_macs = {name: macs for name, _, macs in flops.module_macs(build("configs/mbv2_baseline.yaml"))}
    assert flops.count(model)[0] == pytest.approx(expected_flgc_mmac(model, dense_macs), abs=1e-6)
    # one layer collapsed into a single group costs what its dense conv costs
    with torch.no_grad():
        layers[-1].input_group_logits[:, 0] += 100
        layers[-1].output_group_logits[:, 0] += 100
    after = flops.count(model)[0]
    assert after == pytest.approx(expected_flgc_mmac(model, dense_macs), abs=1e-6)
    assert after > 63  # 62.62 with the last projection uniform, + 7/8 of its dense 1x1 conv


def replace_batchnorms(model, make):
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, child_name, make(child))
    return model


def test_synchronised_batchnorm_counts_like_batchnorm():
    from flgc.engine.distributed import CPUSyncBatchNorm
    model = build("configs/mbv2_flgc8.yaml")
    before = flops.count(model)
    assert flops.count(torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)) == before
    cpu_synced = replace_batchnorms(build("configs/mbv2_flgc8.yaml"), lambda bn: CPUSyncBatchNorm(bn.num_features))
    assert any(isinstance(m, CPUSyncBatchNorm) for m in cpu_synced.modules())
    assert flops.count(cpu_synced) == before


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
