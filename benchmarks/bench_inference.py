"""Inference speed of dense, standard-group and FLGC networks: training form, deployed, and the bound.

python benchmarks/bench_inference.py [--model mobilenetv2_cifar|resnet50] [--size N] [--threads 2]
    [--batch-sizes 1,128] [--device cpu|cuda] [--checkpoint CKPT|NAME] [--json]

All variants are built in one process with fixed seeds, BN folded, and timed in interleaved rounds;
the table shows medians (CPU: wall time; CUDA: CUDA events after warm-up).
- mobilenetv2_cifar (32x32): dense, sgc8, flgc8 / flgc8both masked and deployed, and their bounds;
  FLGC structures from random N(0,1) logits (non-uniform), or the flgc8 structure from --checkpoint.
- resnet50 (torchvision, no weights, --size 224): G=8 on every 1x1 conv of the bottlenecks; dense,
  sgc8 (torch's uniform groups), flgc8-masked, flgc8-deployed, flgc8-bound; FLGC structures random
  and balanced (in/G channels and out/G filters per group), as the uniform initial assignment.
torch runs each variant in its faster memory layout (measured); ONNX Runtime (CPU only) runs NCHW
with all graph optimisations. The bound computes each grouped 1x1 as a dense conv over in/G channels:
the uniform-group MACs without any gather; it is not a valid model.
"""
import copy
import json
import sys

import torch
import torch.nn as nn
import yardsticks

import flgc
from flgc import deploy
from flgc.deploy import export, native
from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.extras import require
from flgc.method import flops
from flgc.method.convert import pointwise_convs
from flgc.models import MobileNetV2
from flgc.records import pretrained

GROUPS = 8
DEFAULT_BATCHES = {"mobilenetv2_cifar": "1,128", "resnet50": "1,32"}
DEFAULT_SIZES = {"mobilenetv2_cifar": 32, "resnet50": 224}


def calibrate_bn(model, size, seed):
    """BatchNorm statistics from one batch of random images, so that folding has real work to do
    and ONNX Runtime's outputs are checked against non-trivial ones."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: this one batch
    with torch.no_grad():
        model.train()(torch.randn(2, 3, size, size))
    return model.eval()


def mobilenet_models(checkpoint_path):
    torch.manual_seed(0)
    models = {"dense": MobileNetV2(), "sgc8": MobileNetV2(pointwise="group"),
              # docs/inference.md's MobileNetV2 table: random, non-uniform N(0, 1) structures
              "flgc8": MobileNetV2(pointwise="flgc", init="random"),
              "flgc8both": MobileNetV2(pointwise="flgc", where="both", init="random")}
    models = {name: calibrate_bn(m, 32, i) for i, (name, m) in enumerate(models.items())}
    if checkpoint_path:
        model, cfg, _ = checkpoint.load_model(pretrained.file_or_release(checkpoint_path))
        model.eval()
        if yardsticks.count_flgc(model) == 0:
            raise UsageError(f"{checkpoint_path} has no FLGC layers; pass an FLGC checkpoint")
        where = cfg.flgc.where
        models["flgc8" if where == "project" else "flgc8both"] = model
    return models


def both_layouts(deploy_form, model):
    """{layout: deployed model with its kernels timed in that layout (torch)}, and the form with every
    grouped layer as a grouped conv ("onnx"), which ONNX Runtime may run faster (ort_runners)."""
    forms = {layout: deploy_form(model, channels_last=layout == "channels_last") for layout in ("channels_last", "contiguous")}
    return {**forms, "onnx": deploy_form(model, strategy="conv", channels_last=False)}


def mobilenet_variants(models, batch, deploy_form):
    dense = deploy_form(models["dense"])
    return {
        "dense": dense,
        "sgc8": deploy_form(models["sgc8"]),
        "flgc8-masked": yardsticks.masked_model(models["flgc8"]),
        "flgc8-deployed": both_layouts(deploy_form, models["flgc8"]),
        "flgc8both-masked": yardsticks.masked_model(models["flgc8both"]),
        "flgc8both-deployed": both_layouts(deploy_form, models["flgc8both"]),
        "flgc8-bound": yardsticks.mobilenet_bound(deploy_form(models["dense"], strategy="conv"), GROUPS, "project"),
        "flgc8both-bound": yardsticks.mobilenet_bound(deploy_form(models["dense"], strategy="conv"), GROUPS, "both"),
    }


def resnet_models():
    import torchvision
    torch.manual_seed(0)
    dense = calibrate_bn(torchvision.models.resnet50(weights=None), 64, 0)
    select = pointwise_convs(GROUPS)
    paths = [name for name, m in dense.named_modules() if isinstance(m, nn.Conv2d) and select(name, m)]
    sgc = yardsticks.uniform_groups(copy.deepcopy(dense), paths, GROUPS)
    flgc8 = yardsticks.assign_balanced(flgc.convert_model(copy.deepcopy(dense), groups=GROUPS), seed=0)
    return {"dense": dense, "sgc8": sgc, "flgc8": flgc8.eval(), "paths": paths}


def resnet_variants(models, batch, deploy_form):
    return {
        "dense": deploy_form(models["dense"]),
        "sgc8": deploy_form(models["sgc8"]),
        "flgc8-masked": yardsticks.masked_model(models["flgc8"]),
        "flgc8-deployed": both_layouts(deploy_form, models["flgc8"]),
        "flgc8-bound": yardsticks.generic_bound(deploy_form(models["dense"]), models["paths"], GROUPS),
    }


def parse(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mobilenetv2_cifar", choices=sorted(DEFAULT_SIZES))
    parser.add_argument("--size", type=int, default=0, help="input height and width (default: 32 | 224)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="", help="comma list (default: 1,128 | 1,32)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--checkpoint", help="mobilenetv2_cifar: take the flgc8 (or flgc8both) structure from this "
                        "checkpoint (a file or a released checkpoint's name)")
    parser.add_argument("--repeats", type=int, default=0, help="timed rounds (default: 40 at batch <= 8, else 10)")
    parser.add_argument("--runtimes", default="torch,onnxruntime",
                        help="comma list of torch, onnxruntime (CPU only), compile (torch.compile, inductor)")
    parser.add_argument("--per-layer", action="store_true",
                        help="mobilenetv2_cifar: also time every stage of dense / bound / deployed (torch) at the largest batch")
    parser.add_argument("--allocator", default="system", choices=["system", "reuse"],
                        help="reuse: glibc malloc keeps freed memory for the next allocation (no fresh pages per call)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch's profiler table (ops by self CPU time) of one forward of every torch variant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.size = args.size or DEFAULT_SIZES[args.model]
    try:
        args.batches = [int(b) for b in (args.batch_sizes or DEFAULT_BATCHES[args.model]).split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes {args.batch_sizes!r}: expected integers like 1,32") from None
    args.runtimes = args.runtimes.split(",")
    if args.threads < 1 or args.size < 8 or args.repeats < 0 or any(b < 1 for b in args.batches) \
            or not set(args.runtimes) <= {"torch", "onnxruntime", "compile"}:
        raise UsageError("--threads, --repeats >= 0 and batch sizes >= 1, --size >= 8; runtimes: torch, onnxruntime, compile")
    if args.model != "mobilenetv2_cifar" and (args.checkpoint or args.per_layer):
        raise UsageError("--checkpoint and --per-layer apply to --model mobilenetv2_cifar only")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False); allowed: cpu")
    if args.allocator == "reuse" and not yardsticks.reuse_freed_memory():
        raise UsageError("--allocator reuse needs glibc's malloc (mallopt), which this C library lacks; allowed: system")
    if args.device == "cuda" and "onnxruntime" in args.runtimes:
        args.runtimes.remove("onnxruntime")
        print("note: ONNX Runtime is timed on CPU only; --device cuda times torch", file=sys.stderr)
    if "onnxruntime" in args.runtimes:
        require("onnx", "--runtimes onnxruntime")
        require("onnxruntime", "--runtimes onnxruntime")
    return args


def torch_runners(built, x, device):
    """{(name, "torch"): callable} in each variant's faster memory layout, and {name: layout}.
    A deployed variant comes as {layout: model} (kernels chosen for that layout): the faster pair runs."""
    runners, layouts = {}, {}
    for name, model in built.items():
        forms = model if isinstance(model, dict) else {"contiguous": model, "channels_last": model}
        layouts[name] = fastest_layout(forms, x, device)
        model = forms[layouts[name]].to(device)
        if layouts[name] == "channels_last":
            model, xl = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        else:
            xl = x
        runners[(name, "torch")] = (lambda m=model, xl=xl: m(xl))
    return runners, layouts


def compile_runners(built, x):
    runners = {}
    for name, model in built.items():
        model = model["channels_last"] if isinstance(model, dict) else model
        compiled = torch.compile(copy.deepcopy(model).to(x.device, memory_format=torch.channels_last))
        xl = x.to(memory_format=torch.channels_last)
        compiled(xl)  # compile outside the timing
        runners[(name, "torch.compile")] = (lambda m=compiled, xl=xl: m(xl))
    return runners


def ort_runners(built, x, reference, threads, size):
    """{(name, "onnxruntime"): callable}, and {name: form} for the deployed variants: ONNX Runtime
    picks its own kernels, but the exported graph is the deployed form's, so both forms are
    exported ("conv": every grouped layer one grouped conv; "contiguous": the kernels timed for
    torch in NCHW) and the faster in ONNX Runtime runs."""
    runners, forms, feed = {}, {}, {"images": x.cpu().numpy()}
    for name, model in built.items():
        candidates = {"conv": model["onnx"], "contiguous": model["contiguous"]} if isinstance(model, dict) else {"": model}
        sessions = {}
        for form, candidate in candidates.items():
            session = yardsticks.ort_session(export.onnx_bytes(candidate, x.shape[0], (3, size, size)), threads)
            error = float((torch.from_numpy(session.run(None, feed)[0]) - reference[name].cpu()).abs().max())
            if error > 1e-3 * max(1.0, float(reference[name].abs().max())):
                raise RuntimeError(f"{name} ({form or 'as built'}): ONNX Runtime output differs by {error}")
            sessions[form] = (lambda s=session: s.run(None, feed))
        if len(sessions) > 1:
            times = yardsticks.interleaved_medians(sessions, repeats=3, warmup=1)
            forms[name] = min(times, key=times.get)
        runners[(name, "onnxruntime")] = sessions[forms.get(name, "")]
    return runners, forms


def print_profile(name, batch, run):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        run()
    print(f"profile: {name}, torch, batch {batch} (one forward; ops by self CPU time)")
    print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def measure(built, batch, args):
    """Rows {variant, runtime, batch, ms, mflops, layout} of every variant and runtime at one batch."""
    device = torch.device(args.device)
    x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch)).to(device)
    runners, layouts, ort_forms = {}, {}, {}
    with torch.no_grad():
        reference = {name: nchw(m).to(device)(x) for name, m in built.items()}
        if "torch" in args.runtimes:
            found, layouts = torch_runners(built, x, device)
            runners.update(found)
        if "compile" in args.runtimes:
            runners.update(compile_runners(built, x))
        if "onnxruntime" in args.runtimes:
            found, ort_forms = ort_runners(built, x, reference, args.threads, args.size)
            runners.update(found)
        repeats = args.repeats or (40 if batch <= 8 else 10)
        times = {}
        for runtime in sorted({r for _, r in runners}):  # variants interleaved within a runtime
            times.update(yardsticks.interleaved_medians(
                {key: fn for key, fn in runners.items() if key[1] == runtime}, repeats, cuda=device.type == "cuda"))
        if args.profile:
            for (name, runtime), run in runners.items():
                if runtime == "torch":
                    print_profile(name, batch, run)
    rows = []
    for (name, runtime), seconds in times.items():
        model = built[name]
        extra = {}
        if runtime == "onnxruntime" and isinstance(model, dict):
            extra = {"form": ort_forms[name]}
            model = model["onnx" if ort_forms[name] == "conv" else "contiguous"]
        elif isinstance(model, dict):
            model = model[layouts.get(name, "channels_last")]
        mflops, _ = flops.count(countable(model.cpu()), (3, args.size, args.size), flgc_as_computed=True)
        rows.append({"variant": name, "runtime": runtime, "batch": batch, "ms": seconds * 1e3, "mflops": mflops,
                     "layout": "nchw" if runtime == "onnxruntime" else layouts.get(name, "channels_last"), **extra})
    return rows


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.model == "resnet50":
        models, variants = resnet_models(), resnet_variants
    else:
        models, variants = mobilenet_models(args.checkpoint), mobilenet_variants
    results = []
    for batch in args.batches:
        def deploy_form(model, strategy="auto", channels_last=True, batch=batch):
            return deploy.deploy_model(model, batch_size=batch, strategy=strategy, channels_last=channels_last,
                                  input_size=(3, args.size, args.size), device=args.device).cpu()
        results += measure(variants(models, batch, deploy_form), batch, args)
    print_table(results)
    if args.per_layer:
        batch = max(args.batches)
        print_per_layer(mobilenet_variants(models, batch, lambda m, strategy="auto", channels_last=True: deploy.deploy_model(
            m, batch_size=batch, strategy=strategy, channels_last=channels_last)), batch)
    if args.json:
        print(json.dumps({"model": args.model, "size": args.size, "device": args.device, "threads": args.threads,
                          "allocator": args.allocator, "native_kernels": native.available(), "results": results}))


def fastest_layout(forms, x, device):
    """"contiguous" or "channels_last": which of forms[layout] runs faster in its layout."""
    channels_last = copy.deepcopy(forms["channels_last"]).to(device, memory_format=torch.channels_last)
    contiguous = forms["contiguous"].to(device)
    times = yardsticks.interleaved_medians({
        "contiguous": lambda: contiguous(x),
        "channels_last": lambda xl=x.to(memory_format=torch.channels_last): channels_last(xl)},
        repeats=3, warmup=1, cuda=device.type == "cuda")
    return min(times, key=times.get)


def countable(model):
    """A copy whose 'matmul' grouped convs run their nn.Conv2d (the same MACs), which the FLOP
    counter's conv hooks see."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, deploy.GroupedConv):
            module.matmul = False
    return model


def nchw(model):
    """The NCHW form of a variant (the reference output)."""
    return model["contiguous"] if isinstance(model, dict) else model


def print_per_layer(built, batch):
    """Median ms of every features[i] stage (and the classifier) of selected variants, torch,
    channels_last, on the stage's real input."""
    names = ["dense", "sgc8", "flgc8-bound", "flgc8-deployed", "flgc8both-bound", "flgc8both-deployed"]
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    stage_times = {}
    with torch.no_grad():
        for name in names:
            model = built[name]["channels_last"] if isinstance(built[name], dict) else built[name]
            model = model.to(memory_format=torch.channels_last)
            inputs, h = [], x
            for stage in model.features:
                inputs.append(h)
                h = stage(h)
            runners = {i: (lambda s=stage, v=v: s(v)) for i, (stage, v) in enumerate(zip(model.features, inputs))}
            stage_times[name] = yardsticks.interleaved_medians(runners, repeats=5, warmup=1)
    print(f"\nper stage, torch, channels_last, batch {batch}, median ms")
    print(f"{'stage':<12}" + "".join(f"{n:>20}" for n in names))
    for i in range(len(built["dense"].features)):
        print(f"{'features.' + str(i):<12}" + "".join(f"{stage_times[n][i] * 1e3:>20.2f}" for n in names))
    print(f"{'sum':<12}" + "".join(f"{sum(stage_times[n].values()) * 1e3:>20.2f}" for n in names))


def print_table(results):
    print(f"{'variant':<20} {'runtime':<14} {'batch':>5} {'ms':>9} {'x dense':>8} {'MMac':>8}  layout")
    for r in results:
        dense = next(d for d in results if d["variant"] == "dense" and d["runtime"] == r["runtime"]
                     and d["batch"] == r["batch"])
        print(f"{r['variant']:<20} {r['runtime']:<14} {r['batch']:>5} {r['ms']:>9.2f} "
              f"{dense['ms'] / r['ms']:>8.2f} {r['mflops']:>8.2f}  {r['layout']}" + (f" ({r['form']})" if "form" in r else ""))


if __name__ == "__main__":
    run(main)
