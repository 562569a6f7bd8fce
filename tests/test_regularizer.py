"""The group-assignment regularizer on the hard structure, its config keys, and the structure statistics."""
import json
import os
import runpy

import pytest
import torch
import torch.nn.functional as F
from helpers import run_main

from flgc.engine import checkpoint, config
from flgc.engine.training import fit
from flgc.errors import UsageError
from flgc.method import flops
from flgc.method.budget import model_mflops, project_to_budget, regularizer_penalty
from flgc.method.layer import FLGConv2d
from flgc.method.regularizer import connections, group_regularizer, hard_group_sizes, project_to_fraction, structure_stats
from flgc.models import MobileNetV2


def set_assignment(layer, input_groups, output_groups, noise=0.0):
    """Logits 0.5 at each row's group (plus N(0, noise^2), which breaks the ties between equal rows)."""
    with torch.no_grad():
        for logits, groups in ((layer.input_group_logits, input_groups), (layer.output_group_logits, output_groups)):
            logits.copy_(F.one_hot(torch.tensor(groups), layer.groups) * 0.5 + noise * torch.randn(logits.shape))


def balance_formula(layer):
    """docs/learning.md's balance formula on the integer hard sizes, in float64."""
    c, n = (s.double() for s in layer.group_sizes())
    g = layer.groups
    m, k = layer.in_channels / g, layer.out_channels / g
    return float((((c - m) / m) ** 2 + ((n - k) / k) ** 2).mean())


def budget_formula(layer, fraction):
    c, n = (s.double() for s in layer.group_sizes())
    return max(0.0, float((c * n).sum()) / (fraction * layer.in_channels * layer.out_channels) - 1.0)


def test_sizes_are_the_hard_counts_with_a_softmax_gradient():
    torch.manual_seed(0)
    layer = FLGConv2d(20, 12, 1, groups=4, init="random", logit_init_std=0.1)
    inputs, filters = hard_group_sizes(layer)
    assert torch.equal(inputs, layer.group_sizes()[0].float())
    assert torch.equal(filters, layer.group_sizes()[1].float())
    (inputs * torch.arange(4.0)).sum().backward()
    soft = layer.input_group_logits.detach().clone().requires_grad_(True)
    (torch.softmax(soft, 1).sum(0) * torch.arange(4.0)).sum().backward()
    assert torch.allclose(layer.input_group_logits.grad, soft.grad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_penalty_values_at_init_are_the_formulas_on_the_hard_sizes(seed):
    torch.manual_seed(seed)
    layers = [FLGConv2d(96, 24, 1, groups=8, init="random", logit_init_std=0.1),
              FLGConv2d(30, 7, 1, groups=3, init="random", logit_init_std=0.1)]
    model = torch.nn.Sequential(*layers)
    balance = sum(balance_formula(m) for m in layers) / 2
    assert balance > 0.01  # a random init is far from uniform: the penalty sees it
    assert group_regularizer(model, "balance").item() == pytest.approx(balance, rel=1e-5)
    for fraction in (None, 0.2):
        expected = sum(budget_formula(m, fraction or 1 / m.groups) for m in layers) / 2
        value = group_regularizer(model, "budget", target_fraction=fraction).item()
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-7)


def flgc_output_sizes(model):
    """[(FLGC layer, (H_out, W_out))] of `model` for one 32x32 image."""
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append((m, o.shape[2:])))
             for m in model.modules() if isinstance(m, FLGConv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return sizes


def test_whole_model_budget_counts_what_flops_counts():
    torch.manual_seed(3)
    model = MobileNetV2(pointwise="flgc", init="random", logit_init_std=0.1)
    counted = flops.count(model)[0]
    assert model_mflops(model).item() == pytest.approx(counted, rel=1e-6)
    fixed = counted - sum(m.macs(*size) / 1e6 for m, size in flgc_output_sizes(model))
    target = counted - 0.05
    penalty = regularizer_penalty(model, "budget", target_mflops=target)
    assert penalty.item() == pytest.approx(0.05 / (target - fixed), rel=1e-3)
    penalty.backward()
    assert any(m.input_group_logits.grad.abs().sum() > 0 for m in model.modules() if isinstance(m, FLGConv2d))
    assert regularizer_penalty(model, "budget", target_mflops=counted + 0.05).item() == 0.0


def test_whole_model_target_below_the_fixed_part_is_a_usage_error():
    model = MobileNetV2(pointwise="flgc")
    with pytest.raises(UsageError, match="target_mflops=10.*outside its FLGC layers"):
        regularizer_penalty(model, "budget", target_mflops=10.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_from_the_uniform_start_meets_the_budget_in_few_moves(seed):
    torch.manual_seed(seed)
    model = MobileNetV2(pointwise="flgc")
    assert flops.count(model)[0] == pytest.approx(62.622, abs=1e-3)
    before = [(m.input_groups().clone(), m.output_groups().clone()) for m in model.modules() if isinstance(m, FLGConv2d)]
    moves = project_to_budget(model, 62.6)
    assert flops.count(model)[0] <= 62.6
    assert 0 < moves <= 20  # 0.022 MMac at 2,048 MACs a paired move in a 32x32 layer
    stats = structure_stats(model)
    assert stats["empty_input_groups"] == stats["empty_filter_groups"] == 0
    after = [(m.input_groups(), m.output_groups()) for m in model.modules() if isinstance(m, FLGConv2d)]
    changed = sum(int((a != b).sum()) for old, new in zip(before, after) for a, b in zip(old, new))
    assert changed == moves  # the count is the channels and filters that changed group
    assert project_to_budget(model, 62.6) == 0  # already under: nothing more to do


def test_projection_far_below_the_uniform_cost_never_empties_a_group():
    torch.manual_seed(2)
    model = MobileNetV2(pointwise="flgc")
    project_to_budget(model, 60.0)
    assert flops.count(model)[0] <= 60.0
    for m in model.modules():
        if isinstance(m, FLGConv2d):
            assert all(int(s.min()) >= 1 for s in m.group_sizes())


def test_per_layer_projection_meets_every_target_fraction():
    torch.manual_seed(1)
    model = MobileNetV2(pointwise="flgc")
    layers = [m for m in model.modules() if isinstance(m, FLGConv2d)]
    assert project_to_fraction(model) == 0  # the uniform start is at 1/G exactly
    moves = project_to_fraction(model, 0.12)
    assert moves > 0
    for m in layers:
        assert int(connections(m)) <= 0.12 * m.in_channels * m.out_channels
        assert all(int(s.min()) >= 1 for s in m.group_sizes())
    assert project_to_fraction(model, 0.12) == 0


def test_projection_makes_no_move_when_the_target_is_above_the_count():
    torch.manual_seed(0)
    model = MobileNetV2(pointwise="flgc")
    logits = [p.clone() for n, p in model.named_parameters() if "group_logits" in n]
    assert project_to_budget(model, 62.7) == 0
    assert all(torch.equal(a, p) for a, (n, p) in zip(logits, ((n, p) for n, p in model.named_parameters() if "group_logits" in n)))
    with pytest.raises(UsageError, match="outside its FLGC layers"):
        project_to_budget(model, 10.0)


def test_projection_moves_the_row_with_the_smallest_margin():
    torch.manual_seed(0)
    layer = FLGConv2d(4, 4, 1, groups=2)
    set_assignment(layer, [0, 0, 1, 1], [0, 0, 0, 1])  # c = (2, 2), n = (3, 1): input channel 0 -> 1 lowers it by 2
    with torch.no_grad():
        layer.input_group_logits[1, 1] = 0.4  # of the rows in group 0, row 1 is the closest to group 1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), layer)
    target = flops.count(model)[0] - 1e-6  # one connection (1,024 MACs at 32x32) less
    assert project_to_budget(model, target) == 1
    assert layer.input_groups().tolist() == [0, 1, 1, 1]
    assert flops.count(model)[0] <= target


def test_train_refuses_a_target_below_the_fixed_part_before_writing_anything(tmp_path, tiny_data, capsys):
    out = tmp_path / "run"
    code = run_main("train.py", "--config", "configs/mbv2_flgc8.yaml", f"data.root={tiny_data}", "data.verify_checksums=false",
                    f"out_dir={out}", "flgc.regularizer.kind=budget", "flgc.regularizer.target_mflops=10")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "target_mflops=10" in err and "Traceback" not in err
    assert not out.exists()


def _optimise(layer, steps, lr=0.1, **options):
    optimizer = torch.optim.SGD([layer.input_group_logits, layer.output_group_logits], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        group_regularizer(layer, **options).backward()
        optimizer.step()


def test_balance_gradient_moves_a_skewed_structure_to_uniform_sizes():
    torch.manual_seed(0)
    layer = FLGConv2d(16, 8, 1, groups=4)
    # inputs 10/2/2/2, filters 5/1/1/1 (group 0 overfull)
    set_assignment(layer, [0] * 10 + [1, 1, 2, 2, 3, 3], [0] * 5 + [1, 2, 3], noise=0.05)
    start = group_regularizer(layer, "balance").item()
    assert start > 0
    group_regularizer(layer, "balance").backward()
    assert layer.input_group_logits.grad.abs().sum() > 0 and layer.output_group_logits.grad.abs().sum() > 0
    _optimise(layer, 300, kind="balance")
    assert layer.group_sizes()[0].tolist() == [4, 4, 4, 4]
    assert layer.group_sizes()[1].tolist() == [2, 2, 2, 2]
    assert group_regularizer(layer, "balance").item() == 0.0


def test_budget_gradient_brings_connections_under_the_target_fraction():
    torch.manual_seed(1)
    layer = FLGConv2d(16, 16, 1, groups=4)
    skewed = [0] * 10 + [1, 1, 2, 2, 3, 3]
    set_assignment(layer, skewed, skewed, noise=0.05)  # 10*10 + 3 * 2*2 = 112 connections
    assert layer.connections() == 112
    _optimise(layer, 300, kind="budget", target_fraction=0.3)  # at most 0.3 * 256 = 76.8
    assert layer.connections() <= 76
    assert group_regularizer(layer, "budget", target_fraction=0.3).item() == 0.0


def test_whole_model_budget_optimisation_meets_the_target():
    torch.manual_seed(4)
    model = MobileNetV2(pointwise="flgc", logit_init_std=0.1, init="random")
    target = flops.count(model)[0] - 0.3
    logits = [p for n, p in model.named_parameters() if "group_logits" in n]
    optimizer = torch.optim.SGD(logits, lr=10.0)
    for _ in range(40):
        optimizer.zero_grad()
        regularizer_penalty(model, "budget", target_mflops=target).backward()
        optimizer.step()
    assert flops.count(model)[0] <= target


def test_none_and_unknown_kinds():
    layer = FLGConv2d(8, 8, 1, groups=2, init="random")
    assert group_regularizer(layer, "none").item() == 0.0
    with pytest.raises(ValueError, match="allowed: balance, budget, none"):
        group_regularizer(layer, "l1")


def test_structure_stats_counts_empty_groups_dead_filters_and_unread_inputs():
    a = FLGConv2d(8, 6, 1, groups=4)
    set_assignment(a, [0, 0, 0, 0, 0, 1, 1, 3], [0, 0, 1, 2, 2, 2])  # input group 2 empty, filter group 3 empty
    b = FLGConv2d(4, 4, 1, groups=2)
    set_assignment(b, [0, 0, 0, 0], [1, 1, 1, 0])  # input group 1 empty: 3 dead filters
    stats = structure_stats(torch.nn.Sequential(a, b))
    assert stats == {"empty_input_groups": 2, "empty_filter_groups": 1, "dead_filters": 3 + 3, "unread_inputs": 1}
    assert structure_stats(MobileNetV2(pointwise="flgc")) == dict.fromkeys(stats, 0)


@pytest.mark.parametrize("overrides, message", [
    (["flgc.regularizer.target_mflops=62.6"], "need flgc.regularizer.kind=budget"),
    (["flgc.regularizer.kind=budget", "flgc.regularizer.target_mflops=0"], "must be > 0"),
    (["flgc.regularizer.kind=budget", "flgc.regularizer.target_fraction=1.5"], r"must be in \(0, 1\]"),
    (["flgc.regularizer.kind=budget", "flgc.regularizer.target_fraction=0.1", "flgc.regularizer.target_mflops=60"],
     "exclude each other"),
    (["flgc.regularizer.weight=-1"], "must be >= 0"),
    (["flgc.init=normal"], "allowed: uniform, random"),
])
def test_bad_regularizer_and_init_keys_are_rejected(overrides, message):
    with pytest.raises(UsageError, match=message):
        config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(overrides))


def _tiny_run_cfg(tmp_path, tiny_data, *overrides):
    """Config of a tiny-data mbv2_flgc8 run with kind=budget and `overrides`."""
    return config.load("configs/mbv2_flgc8.yaml", config.parse_overrides([
        f"data.root={tiny_data}", "data.verify_checksums=false", f"out_dir={tmp_path / 'run'}", "train.batch_size=40",
        "train.progress=false", "flgc.regularizer.kind=budget", *overrides]))


@pytest.mark.slow  # a whole (tiny-data) training run
def test_metrics_rows_log_the_structure_statistics(tmp_path, tiny_data):
    cfg = _tiny_run_cfg(tmp_path, tiny_data, "train.epochs=1", "flgc.regularizer.target_mflops=62.6")
    fit(cfg)
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        row = json.loads(f.readline())
    assert {"empty_input_groups", "empty_filter_groups", "dead_filters", "unread_inputs"} <= set(row)
    assert row["budget_moves"] > 0  # the uniform start (62.62 MMac) is above the 62.6 target


@pytest.mark.slow  # a whole (tiny-data) training run
def test_a_run_with_a_budget_target_logs_mflops_under_it_every_epoch(tmp_path, tiny_data):
    cfg = _tiny_run_cfg(tmp_path, tiny_data, "train.epochs=2", "flgc.regularizer.target_mflops=62.5", "train.lr=1.0")
    fit(cfg)
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and all(row["mflops"] <= 62.5 for row in rows)
    assert rows[0]["budget_moves"] > 0


@pytest.mark.slow  # a whole (tiny-data) training run
def test_a_run_with_a_target_fraction_ends_every_epoch_under_it(tmp_path, tiny_data):
    cfg = _tiny_run_cfg(tmp_path, tiny_data, "train.epochs=1", "flgc.regularizer.target_fraction=0.12")
    row = fit(cfg)
    assert row["budget_moves"] > 0
    model = checkpoint.load_model(os.path.join(cfg.out_dir, "last.pt")).model
    for m in (m for m in model.modules() if isinstance(m, FLGConv2d)):
        assert int(connections(m)) <= 0.12 * m.in_channels * m.out_channels


STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "learning_study.py")


def _study(monkeypatch, capsys, *args):
    """Run scripts/learning_study.py in this process; (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["learning_study.py", *args])
    code = 0
    try:
        runpy.run_path(STUDY, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_study_variants_mean_the_same_under_every_recipe():
    # configs/cpu-long's FLGC8 file sets a budget, the logit lr and a freeze; a variant must not inherit them
    study = runpy.run_path(STUDY)
    configs = os.path.join(os.path.dirname(STUDY), "..", "configs")
    for name, (config_name, _, _) in study["VARIANTS"].items():
        overrides = config.parse_overrides(study["variant_overrides"](name))
        flgc = [config.to_dict(config.load(os.path.join(configs, recipe, config_name + ".yaml"), overrides))["flgc"]
                for recipe in ("", "cpu", "cpu-long")]
        assert flgc[0] == flgc[1] == flgc[2], name
    none = config.load(os.path.join(configs, "cpu-long", "mbv2_flgc8.yaml"),
                       config.parse_overrides(study["variant_overrides"]("flgc8-none"))).flgc
    assert (none.regularizer.kind, none.regularizer.target_mflops, none.logit_lr_scale, none.freeze_epoch) == \
        ("none", None, 1.0, None)


@pytest.mark.parametrize("args, fragment", [
    (["--variants", "flgc8,sgc8"], "unknown variant(s) flgc8; allowed: sgc8"),
    (["--seeds", "0,x"], "not a comma list of integers"),
    (["--seeds", "1,1"], "distinct integers >= 0"),
    (["--seeds", ","], "--seeds is empty"),
    (["seed=3"], "seed and out_dir are set by the study"),
    (["--recipe", "nowhere"], "configs/nowhere has no mbv2_"),
])
def test_study_rejects_bad_arguments_with_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    code, out, err = _study(monkeypatch, capsys, "--out", str(tmp_path), *args)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and out == ""


def test_study_table_reports_mean_and_sd_over_finished_seeds(tmp_path, monkeypatch, capsys):
    def write(seed, accuracy, mflops, empty, epochs=2):
        directory = tmp_path / "flgc8-balance" / f"seed{seed}"
        directory.mkdir(parents=True)
        (directory / "config.yaml").write_text("train:\n  epochs: 2\n")
        rows = [{"epoch": e + 1, "test_accuracy": accuracy, "train_loss": 2.0 - seed / 2, "mflops": mflops,
                 "empty_input_groups": empty, "empty_filter_groups": 0, "reassign_inputs": 4 * seed,
                 "reassign_filters": 2, "reassign_per_layer": {"a": [0, 0]}, "moved_inputs": 100 * (seed + 1),
                 "moved_filters": 10, "eval_split": "validation"} for e in range(epochs)]
        (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(0, 10.0, 62.6, 0)
    write(1, 14.0, 62.7, 2)
    write(2, 99.0, 99.0, 9, epochs=1)  # unfinished: left out
    code, out, _ = _study(monkeypatch, capsys, "--out", str(tmp_path), "--table-only", "--variants",
                          "flgc8-balance,sgc8")
    assert code == 0
    assert "| variant | what | seeds | validation acc., % | train loss, last epoch |" in out
    assert "| flgc8-balance | defaults: uniform init, balance | 2 | 12.00 ± 2.83 | 1.750 ± 0.354 | 62.650 ± 0.071 | " \
           "62.700 | 1.0 ± 1.4 (max 2) | 2/2, 2/2 | 150 / 10 |" in out
    assert "| sgc8 | standard group conv, G=8 | 0 | not run |" in out
