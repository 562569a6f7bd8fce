"""The compiled kernels (flgc/deploy/native.cpp) on ResNet-50's shapes, side by side with what torch does there.

python benchmarks/bench_native.py [--batch-sizes 1,32] [--threads 2] [--repeats 15] [--json]

Residual stream: for each tensor between ResNet-50's bottlenecks (224x224 input: N x 256 x 56 x 56,
512 x 28 x 28, 1024 x 14 x 14, 2048 x 7 x 7; float32, channels_last), `sum`, a permuted sum with
ReLU written over its first operand (what deploy.PermutedSum runs between bottlenecks), and
`gather`, a channel gather into a new tensor, each with every instruction set this CPU offers
(native.row_isa: "avx2" transposes eight rows at a time, "plain" reads each row in permuted order);
`add_relu`, torch's in-place add and ReLU (what dense and sgc8 do there, the reference); `torch_sum`,
the permuted sum as torch ops (the fallback without a compiler). Permutations are random.
Grouped 1x1 convs (G=8, bias): `conv` with the compiled kernel against torch's grouped conv
(`conv_torch`, the reference), for each stride-1 1x1 FLGC conv shape of ResNet-50.
Bottleneck ends: `conv_sum`, a conv3 with its residual sum fused (native.grouped_pointwise_sum,
written over the other operand, as deployment runs 15 of ResNet-50's 16 sums), against
`conv_then_sum`, the compiled conv and then the permuted sum, and `conv_add_torch`, torch's grouped
conv, add and ReLU (what sgc8 does there, the reference).
Timed in interleaved rounds, medians. The last column weights each row by how often the shape occurs
in one forward (15 permuted sums; 33 such convs; 15 fused bottleneck ends). glibc's malloc keeps freed memory for the next
allocation (bench_inference.py --allocator reuse), so a new tensor pays no fresh pages.
"""
import json

import torch
import torch.nn.functional as F
import yardsticks

from flgc.deploy import native
from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError

STREAM = [(256, 56, 3), (512, 28, 4), (1024, 14, 6), (2048, 7, 2)]  # channels, size, permuted sums per forward
# in, out, size, how many stride-1 1x1 convs of ResNet-50's bottlenecks have that shape
CONVS = [(64, 64, 56, 1), (256, 64, 56, 2), (64, 256, 56, 4), (256, 128, 56, 1), (512, 128, 28, 3), (128, 512, 28, 4),
         (512, 256, 28, 1), (1024, 256, 14, 5), (256, 1024, 14, 6), (1024, 512, 14, 1), (2048, 512, 7, 2),
         (512, 2048, 7, 3)]
GROUPS = 8
ENDS = [(64, 256, 56, 3), (128, 512, 28, 4), (256, 1024, 14, 6), (512, 2048, 7, 2)]  # conv3 in, out, size, fused per forward


def parse(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", default="1,32", help="comma list")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes {args.batch_sizes!r}: expected integers like 1,32") from None
    if args.threads < 1 or args.repeats < 1 or any(b < 1 for b in args.batches):
        raise UsageError("--threads, --repeats and batch sizes must be >= 1")
    native.require("bench_native.py")
    if not native.available():
        raise UsageError(f"flgc's compiled kernels are not available here: {native.unavailable_reason()}")
    return args


def with_isa(isa, kernel):
    def timed():
        native.row_isa(isa)
        kernel()
    return timed


def runners(batch, channels, size, isas):
    generator = torch.Generator().manual_seed(channels)
    shape = (batch, channels, size, size)
    a = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    left, right = torch.randperm(channels, generator=generator), torch.randperm(channels, generator=generator)
    found = {}
    for isa in isas:
        found[("sum", isa)] = with_isa(isa, lambda: native.permuted_sum(a, b, left, right, True, True))
        found[("gather", isa)] = with_isa(isa, lambda: native.gather_channels(b, left))
    found[("add_relu", "torch")] = lambda: a.add_(b).relu_()
    found[("torch_sum", "torch")] = lambda: torch.relu(a[:, left] + b[:, right])
    return found


def conv_inputs(batch, channels, out, size, seed):
    """A channels_last input, a grouped 1x1 conv's weight and bias, the weight packed for the kernel,
    and the generator that drew them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out, channels // GROUPS, 1, 1, generator=generator)
    bias = torch.randn(out, generator=generator)
    return x, weight, bias, native.pointwise_weight(weight, GROUPS), generator


def conv_runners(batch, channels, out, size, isa):
    x, weight, bias, packed, _ = conv_inputs(batch, channels, out, size, out)
    return {("conv", isa): with_isa(isa, lambda: native.grouped_pointwise(x, packed, bias)),
            ("conv_torch", "torch"): lambda: F.conv2d(x, weight, bias, groups=GROUPS)}


def end_runners(batch, channels, out, size, isa):
    x, weight, bias, packed, generator = conv_inputs(batch, channels, out, size, out + 1)
    other = torch.randn(batch, out, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    left, right = torch.randperm(out, generator=generator), torch.randperm(out, generator=generator)
    return {("conv_sum", isa): with_isa(isa, lambda: native.grouped_pointwise_sum(x, packed, bias, other, left, right,
                                                                                 True, True)),
            ("conv_then_sum", isa): with_isa(isa, lambda: native.permuted_sum(
                native.grouped_pointwise(x, packed, bias), other, left, right, True, True)),
            ("conv_add_torch", "torch"): lambda: F.conv2d(x, weight, bias, groups=GROUPS).add_(other).relu_()}


def timed_rows(found, repeats, count, reference, **fields):
    """One row per kernel of `found` ({(kernel, isa): callable}), timed in interleaved rounds."""
    medians = yardsticks.interleaved_medians(found, repeats)
    return [{**fields, "kernel": kernel, "isa": isa, "ms": seconds * 1e3, "per_forward": count, "reference": reference}
            for (kernel, isa), seconds in medians.items()]


def main(argv=None):
    args = parse(argv)
    yardsticks.reuse_freed_memory()
    torch.set_num_threads(args.threads)
    best = native.row_isa("best")
    isas = [best] + (["plain"] if best != "plain" else [])
    rows = []
    try:
        for batch in args.batches:
            for channels, size, count in STREAM:
                rows += timed_rows(runners(batch, channels, size, isas), args.repeats, count, "add_relu",
                                   batch=batch, shape=[batch, channels, size, size])
            for table, make, reference in ((CONVS, conv_runners, "conv_torch"), (ENDS, end_runners, "conv_add_torch")):
                for channels, out, size, count in table:
                    rows += timed_rows(make(batch, channels, out, size, best), args.repeats, count, reference,
                                       batch=batch, shape=[batch, channels, size, size], out=out)
    finally:
        native.row_isa("best")
    print(f"{'input shape':<22} {'out':>5} {'kernel':<14} {'isa':<6} {'ms':>9} {'x ref':>6} {'ms x count':>11}")
    for row in rows:
        reference = next(r["ms"] for r in rows if r["shape"] == row["shape"] and r.get("out") == row.get("out")
                         and r["kernel"] == row["reference"])
        print(f"{'x'.join(map(str, row['shape'])):<22} {row.get('out', ''):>5} {row['kernel']:<14} {row['isa']:<6} "
              f"{row['ms']:9.3f} {row['ms'] / reference:6.2f} {row['ms'] * row['per_forward']:11.2f}")
    for batch in args.batches:
        totals = {}
        for row in rows:
            if row["batch"] == batch:
                key = f"{row['kernel']} {row['isa']}"
                totals[key] = totals.get(key, 0.0) + row["ms"] * row["per_forward"]
        print(f"batch {batch}, per forward: " + ", ".join(f"{k} {v:.1f} ms" for k, v in totals.items()))
    if args.json:
        print(json.dumps({"threads": args.threads, "repeats": args.repeats, "results": rows}))


if __name__ == "__main__":
    run(main)
