"""The training loop's FLGC handling: reassignment tracking, freeze, the gradient ablation switch."""
import torch
from helpers import write_tiny_cifar

from flgc import config
from flgc.builders import build_model
from flgc.engine import (
    assignments,
    build_optimizer,
    flgc_layers,
    make_batches,
    prepare_flgc,
    reassignments,
    temperature,
    train_one_epoch,
)


def tiny_config(tmp_path, *overrides):
    root = write_tiny_cifar(str(tmp_path / "data"), per_batch=8, test=8)
    return config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(
        [f"data.root={root}", "data.verify_checksums=false", "train.batch_size=20", *overrides]))


def test_reassignments_count_changed_channels_and_filters():
    before = {"a": (torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0])), "b": (torch.tensor([3]), torch.tensor([2]))}
    after = {"a": (torch.tensor([0, 2, 2, 1]), torch.tensor([1, 0, 0])), "b": (torch.tensor([3]), torch.tensor([2]))}
    assert reassignments(before, after) == {"a": [2, 1], "b": [0, 0]}


def test_tracking_sees_moves_made_by_training(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.logit_init_std=0.001", "flgc.logit_lr_scale=100")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    before = assignments(model)
    train_one_epoch(model, make_batches(cfg, "cpu", train=True), optimizer, cfg, epoch=1)
    moved = reassignments(before, assignments(model))
    assert len(moved) == 17
    assert sum(i for i, _ in moved.values()) > 0 and sum(f for _, f in moved.values()) > 0


def test_freeze_epoch_fixes_assignments_while_weights_train(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.freeze_epoch=2", "flgc.logit_init_std=0.001", "flgc.logit_lr_scale=100")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    batches = make_batches(cfg, "cpu", train=True)
    prepare_flgc(model, cfg, epoch=1)
    assert not any(layer.frozen for _, layer in flgc_layers(model))
    prepare_flgc(model, cfg, epoch=2)
    assert all(layer.frozen for _, layer in flgc_layers(model))
    logits = [layer.input_group_logits.detach().clone() for _, layer in flgc_layers(model)]
    weight = flgc_layers(model)[0][1].weight.detach().clone()
    before = assignments(model)
    train_one_epoch(model, batches, optimizer, cfg, epoch=2)
    assert all(torch.equal(a, layer.input_group_logits) for a, (_, layer) in zip(logits, flgc_layers(model)))
    assert sum(sum(v) for v in reassignments(before, assignments(model)).values()) == 0
    assert not torch.equal(weight, flgc_layers(model)[0][1].weight)


def test_gradient_switch_reaches_every_layer_and_changes_the_logit_gradient(tmp_path):
    grads = {}
    for gradient in ("straight_through", "reference_masked"):
        cfg = tiny_config(tmp_path, f"flgc.gradient={gradient}", "flgc.regularizer.kind=none")
        torch.manual_seed(0)
        model = build_model(cfg)
        assert all(layer.gradient == gradient for _, layer in flgc_layers(model))
        images, labels = next(iter(make_batches(cfg, "cpu", train=False)))
        torch.nn.functional.cross_entropy(model.train()(images), labels).backward()
        grads[gradient] = flgc_layers(model)[-1][1].output_group_logits.grad.clone()
    assert grads["straight_through"].abs().sum() > 0 and grads["reference_masked"].abs().sum() > 0
    assert not torch.allclose(grads["straight_through"], grads["reference_masked"])


def test_logits_have_their_own_lr_and_weight_decay(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.logit_lr_scale=10", "flgc.logit_weight_decay=0.001")
    optimizer = build_optimizer(build_model(cfg), cfg)
    weights, logits = optimizer.param_groups
    assert len(logits["params"]) == 34 and logits["lr"] == 1.0 and logits["weight_decay"] == 0.001
    assert weights["lr"] == 0.1 and weights["weight_decay"] == 4e-5


def test_temperature_schedule_is_geometric(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.temperature_start=4", "flgc.temperature_end=0.25", "train.epochs=5")
    assert [round(temperature(cfg, e), 4) for e in range(1, 6)] == [4.0, 2.0, 1.0, 0.5, 0.25]


def test_amp_setting_reaches_the_convolutions():
    from flgc.engine import _autocast, resolve_amp
    conv = torch.nn.Conv2d(3, 4, 3)
    cpu = torch.device("cpu")
    for amp, dtype in (("none", torch.float32), ("bf16", torch.bfloat16)):
        with _autocast(config.from_dict({"train": {"amp": amp}}), cpu):
            assert conv(torch.randn(1, 3, 8, 8)).dtype == dtype
    assert resolve_amp("auto", cpu) == "none"  # measured: bf16 does not speed up CPU training here
    assert resolve_amp("bf16", cpu) == "bf16"
