"""The training step and run (flgc.engine.step, flgc.engine.training): FLGC handling (reassignment tracking, freeze,
the gradient ablation switch), on-device sums, compile choices and the fallback to eager, and the
optimizer and schedule of flgc.engine.optim."""
import math

import pytest
import torch
from helpers import write_tiny_cifar

from flgc.engine import config
from flgc.engine.data import make_batches
from flgc.engine.optim import build_optimizer, build_scheduler, lr_factor
from flgc.engine.step import EpochSums, compiled, objective, resolve_compile, train_steps
from flgc.engine.training import assignments, prepare_flgc, reassignments, temperature
from flgc.errors import UsageError
from flgc.method.layer import flgc_layers
from flgc.method.regularizer import group_regularizer
from flgc.models import build_model


def tiny_config(tmp_path, *overrides):
    root = write_tiny_cifar(str(tmp_path / "data"), per_batch=8, test=8)
    return config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(
        [f"data.root={root}", "data.verify_checksums=false", "train.batch_size=20", *overrides]))


def train(model, cfg, batches, optimizer=None, wrap=None, steps=None):
    """One (part of an) epoch as a training run trains it; returns (EpochSums, steps done)."""
    optimizer = optimizer or build_optimizer(model, cfg.train, cfg.flgc)
    reg = cfg.flgc.regularizer
    loss_fn = objective(model, torch.nn.CrossEntropyLoss(), lambda: reg.weight * group_regularizer(model, reg.kind))
    sums = EpochSums(torch.device("cpu"))
    model.train()
    done = train_steps(wrap(loss_fn) if wrap else loss_fn, optimizer, batches, sums, steps=steps)
    return sums, done


def test_reassignments_count_changed_channels_and_filters():
    before = {"a": (torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0])), "b": (torch.tensor([3]), torch.tensor([2]))}
    after = {"a": (torch.tensor([0, 2, 2, 1]), torch.tensor([1, 0, 0])), "b": (torch.tensor([3]), torch.tensor([2]))}
    assert reassignments(before, after) == {"a": [2, 1], "b": [0, 0]}


def test_tracking_sees_moves_made_by_training(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.logit_init_std=0.001", "flgc.logit_lr_scale=100")
    torch.manual_seed(0)
    model = build_model(cfg)
    before = assignments(model)
    train(model, cfg, make_batches(cfg, "cpu", train=True))
    moved = reassignments(before, assignments(model))
    assert len(moved) == 17
    assert sum(i for i, _ in moved.values()) > 0 and sum(f for _, f in moved.values()) > 0


def test_freeze_epoch_fixes_assignments_while_weights_train(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.freeze_epoch=2", "flgc.logit_init_std=0.001", "flgc.logit_lr_scale=100")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.train, cfg.flgc)
    batches = make_batches(cfg, "cpu", train=True)
    prepare_flgc(model, cfg, epoch=1)
    assert not any(layer.frozen for _, layer in flgc_layers(model))
    prepare_flgc(model, cfg, epoch=2)
    assert all(layer.frozen for _, layer in flgc_layers(model))
    logits = [layer.input_group_logits.detach().clone() for _, layer in flgc_layers(model)]
    weight = flgc_layers(model)[0][1].weight.detach().clone()
    before = assignments(model)
    train(model, cfg, batches, optimizer)
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
    optimizer = build_optimizer(build_model(cfg), cfg.train, cfg.flgc)
    weights, logits = optimizer.param_groups
    assert len(logits["params"]) == 34 and logits["lr"] == 1.0 and logits["weight_decay"] == 0.001
    assert weights["lr"] == 0.1 and weights["weight_decay"] == 4e-5


def test_temperature_schedule_is_geometric(tmp_path):
    cfg = tiny_config(tmp_path, "flgc.temperature_start=4", "flgc.temperature_end=0.25", "train.epochs=5")
    assert [round(temperature(cfg, e), 4) for e in range(1, 6)] == [4.0, 2.0, 1.0, 0.5, 0.25]


def test_amp_setting_reaches_the_convolutions():
    from flgc.engine.step import autocast, resolve_amp
    conv = torch.nn.Conv2d(3, 4, 3)
    cpu = torch.device("cpu")
    for amp, dtype in (("none", torch.float32), ("bf16", torch.bfloat16)):
        with autocast(amp, cpu):
            assert conv(torch.randn(1, 3, 8, 8)).dtype == dtype
    assert resolve_amp("bf16", cpu) == "bf16"


def test_auto_amp_follows_the_cpus_bf16_support(monkeypatch, capsys):
    from flgc.engine import step
    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "none")):
        monkeypatch.setattr(step, "cpu_computes_bf16", lambda native=native: native)
        assert step.resolve_amp("auto", cpu) == expected
        step.warn_emulated_bf16("bf16", cpu)
        warned = capsys.readouterr().err
        assert ("without native bf16" in warned) is not native and warned.count("\n") <= 1
    step.warn_emulated_bf16("none", cpu)
    assert capsys.readouterr().err == ""


def test_on_device_sums_equal_the_host_sums_read_every_step(tmp_path):
    cfg = tiny_config(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    host = {"loss": 0.0, "regularizer": 0.0, "correct": 0, "seen": 0}

    def reading(loss_fn):  # what the loop did before: .item() after every step
        def step(images, labels):
            total, loss, penalty, correct = loss_fn(images, labels)
            for key, value in (("loss", loss.item() * len(labels)), ("regularizer", penalty.item() * len(labels)),
                               ("correct", correct.item()), ("seen", len(labels))):
                host[key] += value
            return total, loss, penalty, correct
        return step
    sums, done = train(model, cfg, make_batches(cfg, "cpu", train=True), wrap=reading)
    assert done == 2 and host["seen"] == 40  # 40 images, batch 20
    assert sums.totals() == host
    assert bool(sums.finite)


def test_the_loop_stops_after_the_steps_asked_and_flags_a_nan(tmp_path):
    cfg = tiny_config(tmp_path, "train.batch_size=10")
    torch.manual_seed(0)
    model = build_model(cfg)
    batches = make_batches(cfg, "cpu", train=True)
    sums, done = train(model, cfg, batches, steps=3)
    assert done == 3 and sums.seen == 30 and bool(sums.finite)

    def poisoned(loss_fn):
        def step(images, labels):
            total, *rest = loss_fn(images, labels)
            return total * float("nan"), *rest
        return step
    sums, _ = train(model, cfg, batches, wrap=poisoned, steps=1)
    assert not bool(sums.finite)


def test_compile_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cpu) == "none" and resolve_compile("auto", cuda) == "none"
    assert resolve_compile("cudagraphs", cuda) == "cudagraphs"
    assert resolve_compile("inductor", cpu) == "inductor"
    with pytest.raises(UsageError, match="cudagraphs needs a CUDA device"):
        resolve_compile("cudagraphs", cpu)
    with pytest.raises(UsageError, match="allowed: none, inductor, cudagraphs, auto"):
        config.from_dict({"train": {"compile": "fast"}})
    fn = objective(torch.nn.Linear(4, 3), torch.nn.CrossEntropyLoss())
    assert compiled(fn, "none") is fn


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("graph capture failed (simulated)")


def _failing_compiler(where, at_call):
    """A stand-in for flgc.engine.step.compiled whose result fails in the forward or the backward of its
    `at_call`-th call (the calls before it compute what eager does)."""
    def compiled_stub(fn, choice):
        if choice == "none":
            return fn
        calls = []

        def broken(images, labels):
            calls.append(1)
            if len(calls) < at_call:
                return fn(images, labels)
            if where == "forward":
                raise RuntimeError("compilation failed (simulated)")
            total, *rest = fn(images, labels)  # runs the network: BatchNorm statistics move
            return (_FailsInBackward.apply(total), *rest)
        return broken
    return compiled_stub


# a failure in a later step's backward: steps ran compiled, and BatchNorm statistics moved (two fits each: slow)
@pytest.mark.slow
@pytest.mark.parametrize("where, at_call", [("forward", 1), ("backward", 1), ("backward", 3)])
def test_a_failing_compile_warns_once_and_continues_eager_with_the_same_results(tmp_path, monkeypatch, capsys,
                                                                                where, at_call):
    from flgc.engine import step, training
    runs = {}
    for choice in ("none", "inductor"):
        cfg = tiny_config(tmp_path, "train.epochs=2", "train.batch_size=10", "train.progress=false",
                          f"train.compile={choice}", f"out_dir={tmp_path / choice}")
        with monkeypatch.context() as patch:
            patch.setattr(step, "compiled", _failing_compiler(where, at_call))
            row = training.fit(cfg)
        runs[choice] = (torch.load(tmp_path / choice / "last.pt", weights_only=True)["model"], row)
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("warning: train.compile")]
        assert len(warnings) == (1 if choice == "inductor" else 0)
    assert f"failed in step {at_call} (RuntimeError" in warnings[0] and warnings[0].endswith("continuing eager")
    eager, fallback = runs["none"][0], runs["inductor"][0]
    assert eager.keys() == fallback.keys() and all(torch.equal(eager[k], fallback[k]) for k in eager)
    assert runs["inductor"][1]["compile"] == "none"


@pytest.mark.slow
def test_inductor_compiled_objective_matches_eager():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    fn = objective(network, torch.nn.CrossEntropyLoss())
    eager, graph = fn(images, labels), compiled(fn, "inductor")(images, labels)
    for a, b in zip(eager, graph):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def recipe(**keys):
    return config.from_dict({"train": keys}).train


def test_multistep_per_step_equals_the_per_epoch_reference_schedule():
    train_cfg = recipe(epochs=10, milestones=[3, 6], lr_gamma=0.1)
    model = torch.nn.Linear(2, 2)
    reference = torch.optim.SGD(model.parameters(), lr=0.1)
    per_epoch = torch.optim.lr_scheduler.MultiStepLR(reference, [3, 6], 0.1)
    optimizer = build_optimizer(model, train_cfg, config.from_dict({}).flgc)
    per_step = build_scheduler(optimizer, train_cfg, steps_per_epoch=4)
    for _ in range(10):
        for _ in range(4):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)
            optimizer.step()
            per_step.step()
        reference.step()
        per_epoch.step()


def test_warmup_cosine_onecycle_and_lr_scaling():
    cosine = recipe(epochs=10, schedule="cosine", warmup_epochs=2)
    assert [lr_factor(cosine, 5, s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # warm-up ends at step 10
    assert lr_factor(cosine, 5, 10 + 20) == pytest.approx(0.5)  # halfway through the 40 cosine steps
    assert lr_factor(cosine, 5, 49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    onecycle = recipe(epochs=10, schedule="onecycle", warmup_epochs=2)
    assert lr_factor(onecycle, 5, 30) == pytest.approx(0.5) and lr_factor(onecycle, 5, 49) == pytest.approx(1 / 40)
    scaled = recipe(lr=0.1, batch_size=512, base_batch_size=128, nesterov=True)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), scaled, config.from_dict({}).flgc)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4) and optimizer.defaults["nesterov"]


def test_weight_decay_spares_norms_biases_and_depthwise_filters_when_asked(tmp_path):
    cfg = tiny_config(tmp_path, "train.weight_decay=0.0005", "train.norm_weight_decay=0", "train.depthwise_weight_decay=0")
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.train, cfg.flgc)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay_of) == len(list(model.parameters()))
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if "logits" in name:
                assert decay_of[id(param)] == cfg.flgc.logit_weight_decay
            elif isinstance(module, torch.nn.BatchNorm2d) or name == "bias":
                assert decay_of[id(param)] == 0.0
            elif isinstance(module, torch.nn.Conv2d) and module.groups == module.in_channels > 1:
                assert decay_of[id(param)] == 0.0
            else:
                assert decay_of[id(param)] == 5e-4
    plain = build_optimizer(model, tiny_config(tmp_path, "train.weight_decay=0.0005").train, cfg.flgc)
    assert [group["weight_decay"] for group in plain.param_groups] == [5e-4, cfg.flgc.logit_weight_decay]  # weights, logits
