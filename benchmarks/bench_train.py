"""Training step speed (forward + backward + SGD step) of MobileNetV2 variants, side by side.

python benchmarks/bench_train.py [--threads 2] [--batch 128] [--repeats 10] [--amp auto|none|bf16] [--json]
python benchmarks/bench_train.py --settings [--threads 2] [--batch 128] [--repeats 10] [--json]
python benchmarks/bench_train.py [--settings] --only NAME [...]
python benchmarks/bench_train.py --projections [--threads 2] [--batch 128] [--repeats 10] [--json]
python benchmarks/bench_train.py --device cuda [--batch 512] [--modes eager,graphs] [--repeats 30] [--json]
Random inputs at batch 128, channels_last, CPU by default; the variants are timed in interleaved
rounds and the medians reported. A step is the trainer's (flgc.engine.step): its objective (network, cross-entropy,
group regularizer, under train.amp autocast) then backward and the SGD step. On CUDA every step is
timed with CUDA events after warm-up steps (which also compile), and each variant runs in each
--mode: eager, inductor (torch.compile) and graphs (torch.compile mode="reduce-overhead": forward
and backward replayed as CUDA graphs; train.compile=cudagraphs).
flgc8-frozen is FLGC8 after flgc.freeze_epoch (assignments fixed, no
straight-through path, masked dense conv); flgc8-frozen-grouped computes each frozen FLGC layer as a
grouped conv on gathered channels instead (flgc.frozen_compute=grouped).
--settings instead times the dense model under each step setting (memory layout, bf16 autocast,
torch.compile): the evidence for the CPU defaults. --only NAME times one variant (or setting) alone
in this process: interleaving several models in one process measurably slows the fp32 eager step
on this CPU, so cross-check a ratio with one process per row.
--projections times forward + backward of the model's 17 projection 1x1 convs alone, at their
shapes in a batch-128 step, dense and as torch's uniform 8-group conv, next to the whole fp32 step of
the dense model: their share of the step and the ceiling of what grouping them can save.
"""
import json

import torch
import torch.nn.functional as F
from yardsticks import interleaved_medians

from flgc.engine import config
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.optim import build_optimizer
from flgc.engine.step import autocast, compiled, objective, resolve_amp, weighted_penalty
from flgc.errors import UsageError
from flgc.method.layer import flgc_layers
from flgc.models import build_model
from flgc.models.mobilenetv2 import InvertedResidual

VARIANTS = {"dense": ["flgc.pointwise=dense"], "sgc8": ["flgc.pointwise=group"], "flgc8": ["flgc.pointwise=flgc"],
            "flgc8-frozen": ["flgc.pointwise=flgc", "flgc.logit_init_std=1"],
            "flgc8-frozen-grouped": ["flgc.pointwise=flgc", "flgc.logit_init_std=1", "flgc.frozen_compute=grouped"]}


SETTINGS = {"fp32 channels_last": dict(amp="none"), "fp32 contiguous": dict(amp="none", channels_last=False),
            "bf16 channels_last": dict(amp="bf16"), "fp32 channels_last compile": dict(amp="none", compile="inductor")}
MODES = {"eager": "none", "inductor": "inductor", "graphs": "cudagraphs"}


def stepper(name, overrides, batch, amp, channels_last=True, compile="none", device=torch.device("cpu")):
    """One training step of a variant as flgc.engine.step makes it, on random inputs."""
    cfg = config.from_dict({}, config.parse_overrides(overrides + [f"train.amp={amp}"]))
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg).to(device, memory_format=layout).train()
    if "frozen" in name:
        for _, layer in flgc_layers(model):
            layer.freeze(grouped=cfg.flgc.frozen_compute == "grouped")
    optimizer = build_optimizer(model, cfg.train, cfg.flgc)
    images = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)
    precision = None if resolve_amp(amp, device) == "none" else (lambda: autocast(amp, device))
    penalty = weighted_penalty(model, cfg.flgc.regularizer)
    loss_fn = compiled(objective(model, torch.nn.CrossEntropyLoss(), penalty, precision), compile)

    def step():
        total = loss_fn(images, labels)[0]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return step


def projection_steppers(batch, groups=8):
    """{dense | group<G>: forward + backward of every projection 1x1 conv at its shape in the model}."""
    cfg = config.from_dict({}, config.parse_overrides(VARIANTS["dense"]))
    model = build_model(cfg).to(memory_format=torch.channels_last)
    shapes = []
    hooks = [block.parts()["project"].register_forward_hook(lambda m, i, o: shapes.append((i[0].shape, m.out_channels)))
             for block in model.modules() if isinstance(block, InvertedResidual)]
    with torch.no_grad():
        model(torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()

    def grouped(g):
        tensors = []
        for shape, out_channels in shapes:
            x = torch.randn(shape).to(memory_format=torch.channels_last).requires_grad_()
            weight = torch.randn(out_channels, shape[1] // g, 1, 1, requires_grad=True)
            grad = torch.randn(shape[0], out_channels, *shape[2:]).to(memory_format=torch.channels_last)
            tensors.append((x, weight, grad))

        def step():
            for x, weight, grad in tensors:  # gradients returned, not accumulated: as inside a network
                torch.autograd.grad(F.conv2d(x, weight, groups=g), (x, weight), grad)
        return step
    return {"whole step, dense model": stepper("dense", VARIANTS["dense"], batch, "none"),
            "projections, dense": grouped(1), f"projections, {groups} groups": grouped(groups)}


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--modes", default=None, help="comma list of eager, inductor, graphs (CUDA only); "
                        "default eager on CPU, eager,graphs on CUDA")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"],
                        help="autocast; auto: what train.py uses on this CPU (train.amp=auto)")
    parser.add_argument("--settings", action="store_true", help="time step settings of the dense model")
    parser.add_argument("--only", metavar="NAME", help="time this variant (or with --settings, setting) alone")
    parser.add_argument("--projections", action="store_true", help="time the projection 1x1 convs alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads < 1 or args.batch < 1 or args.repeats < 1:
        raise UsageError("--threads, --batch and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    device, modes = check(args)
    if args.projections:
        steps = projection_steppers(args.batch)
        key, what = "timed", f"fwd + bwd, batch {args.batch}, {args.threads} threads, fp32, channels_last"
        return report(interleaved_medians(steps, args.repeats, warmup=3, cuda=device.type == "cuda"), key, what, args)
    names = [args.only] if args.only else list(SETTINGS if args.settings else VARIANTS)
    if args.settings:
        steps = {name: stepper("dense", VARIANTS["dense"], args.batch, **SETTINGS[name]) for name in names}
        key, what = "setting", f"dense model, batch {args.batch}, {args.threads} threads"
    else:
        steps = {f"{name} {mode}" if len(modes) > 1 else name:
                 stepper(name, VARIANTS[name], args.batch, args.amp, compile=MODES[mode], device=device)
                 for name in names for mode in modes}
        amp = resolve_amp(args.amp, device)
        where = f"{torch.cuda.get_device_name()}, CUDA events" if device.type == "cuda" else f"{args.threads} threads"
        key, what = "variant", f"batch {args.batch}, {where}, channels_last, amp {amp}"
    report(interleaved_medians(steps, args.repeats, warmup=3, cuda=device.type == "cuda"), key, what, args)  # warm-up compiles


def check(args):
    """(device, modes) of the arguments; bad combinations raise UsageError."""
    if args.projections and (args.settings or args.only):
        raise UsageError("--projections times its own fixed rows; it takes neither --settings nor --only")
    names = SETTINGS if args.settings else VARIANTS
    if args.only is not None and args.only not in names:
        raise UsageError(f"--only {args.only!r}: allowed: {', '.join(repr(n) for n in names)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    if args.device == "cuda" and (args.settings or args.projections):
        raise UsageError("--settings and --projections time CPU settings; use them with --device cpu")
    modes = (args.modes or ("eager,graphs" if args.device == "cuda" else "eager")).split(",")
    if not set(modes) <= set(MODES) or (args.device == "cpu" and "graphs" in modes):
        raise UsageError(f"--modes {args.modes}: allowed: eager, inductor, graphs (graphs on CUDA only)")
    return torch.device(args.device), modes


def report(medians, key, what, args):
    first = next(iter(medians.values()))
    width = max(len(name) for name in medians) + 2
    print(f"{key:<{width}} {'ms/step':>9} {'ratio':>7}   ({what}, median of {args.repeats}; ratio to the first row)")
    for name, seconds in medians.items():
        print(f"{name:<{width}} {seconds * 1e3:>9.1f} {seconds / first:>7.3f}")
    if args.json:
        results = [{key: name, "ms_per_step": seconds * 1e3} for name, seconds in medians.items()]
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    run(main)
