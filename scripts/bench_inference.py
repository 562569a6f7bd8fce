"""Inference speed of dense, SGC8 and FLGC8 MobileNetV2 (training form, deployed, and the bound).

python scripts/bench_inference.py [--threads 2] [--batch-sizes 1,128] [--checkpoint CKPT] [--json]

All variants are built in one process with fixed seeds (FLGC structures from random N(0,1) logits,
i.e. non-uniform, or the flgc8 structure from --checkpoint), BN folded, and timed in interleaved
rounds; the table shows medians. torch runs each variant in its faster memory layout (measured);
ONNX Runtime runs NCHW with all graph optimisations.
"""
import copy
import json

import torch
import yardsticks

from flgc import checkpoint, deploy, export, flops
from flgc.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.models import MobileNetV2


def randomise_bn(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


def training_models(checkpoint_path):
    torch.manual_seed(0)
    models = {"dense": MobileNetV2(), "sgc8": MobileNetV2(pointwise="group"),
              "flgc8": MobileNetV2(pointwise="flgc"), "flgc8both": MobileNetV2(pointwise="flgc", where="both")}
    models = {name: randomise_bn(m, i) for i, (name, m) in enumerate(models.items())}
    if checkpoint_path:
        payload = checkpoint.load(checkpoint_path)
        model = checkpoint.model_from(payload, checkpoint_path).eval()
        if yardsticks.count_flgc(model) == 0:
            raise UsageError(f"{checkpoint_path} has no FLGC layers; pass an FLGC checkpoint")
        where = payload["config"]["flgc"]["where"]
        models["flgc8" if where == "project" else "flgc8both"] = model
    return models


def variants(models, batch):
    dense = deploy.convert(models["dense"], batch_size=batch)
    return {
        "dense": dense,
        "sgc8": deploy.convert(models["sgc8"], batch_size=batch),
        "flgc8-masked": yardsticks.masked_model(models["flgc8"]),
        "flgc8-deployed": deploy.convert(models["flgc8"], batch_size=batch),
        "flgc8both-masked": yardsticks.masked_model(models["flgc8both"]),
        "flgc8both-deployed": deploy.convert(models["flgc8both"], batch_size=batch),
        "flgc8-bound": yardsticks.mobilenet_bound(deploy.convert(models["dense"], strategy="conv"), 8, "project"),
        "flgc8both-bound": yardsticks.mobilenet_bound(deploy.convert(models["dense"], strategy="conv"), 8, "both"),
    }


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,128")
    parser.add_argument("--checkpoint", help="take the flgc8 (or flgc8both) structure from this checkpoint")
    parser.add_argument("--repeats", type=int, default=0, help="timed rounds (default: 40 at batch 1, 10 at 128)")
    parser.add_argument("--runtimes", default="torch,onnxruntime",
                        help="comma list of torch, onnxruntime, compile (torch.compile, inductor)")
    parser.add_argument("--per-layer", action="store_true",
                        help="also time every stage of dense / bound / deployed (torch) at the largest batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes {args.batch_sizes!r}: expected integers like 1,128") from None
    runtimes = args.runtimes.split(",")
    if args.threads < 1 or any(b < 1 for b in batches) or not set(runtimes) <= {"torch", "onnxruntime", "compile"}:
        raise UsageError("--threads and batch sizes must be >= 1; runtimes: torch, onnxruntime, compile")
    torch.set_num_threads(args.threads)
    models = training_models(args.checkpoint)
    results = []
    for batch in batches:
        built = variants(models, batch)
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        runners, layouts = {}, {}
        with torch.no_grad():
            reference = {name: m(x) for name, m in built.items()}
            if "torch" in runtimes:
                for name, model in built.items():
                    layouts[name] = fastest_layout(model, x)
                    xl = x.to(memory_format=torch.channels_last) if layouts[name] == "channels_last" else x
                    model = model.to(memory_format=torch.channels_last) if layouts[name] == "channels_last" else model
                    runners[(name, "torch")] = (lambda m=model, xl=xl: m(xl))
            if "compile" in runtimes:
                for name, model in built.items():
                    compiled = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last))
                    xl = x.to(memory_format=torch.channels_last)
                    compiled(xl)  # compile outside the timing
                    runners[(name, "torch.compile")] = (lambda m=compiled, xl=xl: m(xl))
                    layouts.setdefault(name, "channels_last")
            if "onnxruntime" in runtimes:
                feed = {"images": x.numpy()}
                for name, model in built.items():
                    session = yardsticks.ort_session(export.onnx_bytes(model, batch), args.threads)
                    out = session.run(None, feed)[0]
                    error = float((torch.from_numpy(out) - reference[name]).abs().max())
                    if error > 1e-3:
                        raise RuntimeError(f"{name}: ONNX Runtime output differs by {error}")
                    runners[(name, "onnxruntime")] = (lambda s=session: s.run(None, feed))
            repeats = args.repeats or (40 if batch <= 8 else 10)
            times = {}
            for runtime in sorted({r for _, r in runners}):  # variants interleaved within a runtime
                times.update(yardsticks.interleaved_medians(
                    {key: fn for key, fn in runners.items() if key[1] == runtime}, repeats))
        for (name, runtime), seconds in times.items():
            mflops, _ = flops.count(built[name], flgc_as_computed=True)
            results.append({"variant": name, "runtime": runtime, "batch": batch, "ms": seconds * 1e3,
                            "mflops": mflops,
                            "layout": "nchw" if runtime == "onnxruntime" else layouts.get(name, "channels_last")})
    print_table(results)
    if args.per_layer:
        print_per_layer(variants(models, max(batches)), max(batches))
    if args.json:
        print(json.dumps({"threads": args.threads, "results": results}))


def fastest_layout(model, x):
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    times = yardsticks.interleaved_medians({
        "contiguous": lambda: model(x),
        "channels_last": lambda xl=x.to(memory_format=torch.channels_last): channels_last(xl)},
        repeats=5, warmup=2)
    return min(times, key=times.get)


def print_per_layer(built, batch):
    """Median ms of every features[i] stage (and the classifier) of selected variants, torch,
    channels_last, on the stage's real input."""
    names = ["dense", "sgc8", "flgc8-bound", "flgc8-deployed", "flgc8both-bound", "flgc8both-deployed"]
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    stage_times = {}
    with torch.no_grad():
        for name in names:
            model = built[name].to(memory_format=torch.channels_last)
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
    print(f"{'variant':<20} {'runtime':<12} {'batch':>5} {'ms':>9} {'x dense':>8} {'MMac':>7}  layout")
    for r in results:
        dense = next(d for d in results if d["variant"] == "dense" and d["runtime"] == r["runtime"]
                     and d["batch"] == r["batch"])
        print(f"{r['variant']:<20} {r['runtime']:<12} {r['batch']:>5} {r['ms']:>9.2f} "
              f"{dense['ms'] / r['ms']:>8.2f} {r['mflops']:>7.2f}  {r['layout']}")


if __name__ == "__main__":
    run(main)
