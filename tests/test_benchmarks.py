"""The benchmarks (benchmarks/) run end to end at toy sizes and keep their JSON contract; argument checks run in
this process through each script's main; their yardsticks import by name (benchmarks/ is on pytest's pythonpath)."""
import copy
import json

import pytest
import torch
import yardsticks
from helpers import assert_usage_error, last_json, run_cli, write_tiny_cifar
from yardsticks import assign_balanced

import flgc
from flgc import deploy
from flgc.method.layer import flgc_layers
from flgc.models import MobileNetV2


def test_bench_data_reports_both_pipelines(tmp_path, call):
    root = write_tiny_cifar(str(tmp_path), per_batch=60)  # 300 images: 3 batches of 128
    out = last_json(call("benchmarks/bench_data.py", f"data.root={root}", "data.verify_checksums=false",
                            "--batches", "1", "--rounds", "1", "--workers", "0", "--json"))
    assert set(out) == {"ours_images_per_s", "reference_images_per_s"}  # both pipelines ran and were timed
    assert all(isinstance(rate, float) and 0 < rate < float("inf") for rate in out.values())


def test_bench_train_refuses_what_it_cannot_run(call):
    assert_usage_error(call("benchmarks/bench_train.py", "--only", "nope"), "allowed")
    assert_usage_error(call("benchmarks/bench_train.py", "--modes", "graphs"), "graphs on CUDA only")
    assert_usage_error(call("benchmarks/bench_train.py", "--projections", "--only", "dense"), "--projections")
    if not torch.cuda.is_available():
        assert_usage_error(call("benchmarks/bench_train.py", "--device", "cuda"), "no CUDA device")


@pytest.mark.slow  # a whole process (about 4 s)
def test_bench_train_one_variant_row():
    out = last_json(run_cli("benchmarks/bench_train.py", "--only", "flgc8", "--batch", "2", "--repeats", "1", "--json"))
    assert [r["variant"] for r in out["results"]] == ["flgc8"] and out["results"][0]["ms_per_step"] > 0


@pytest.mark.slow  # a whole process with the profiler on (about 9 s): CI runs it with the slow tests
def test_bench_inference_profiles_the_torch_variants():
    result = run_cli("benchmarks/bench_inference.py", "--size", "32", "--batch-sizes", "1", "--repeats", "1",
                     "--runtimes", "torch", "--profile", "--json")
    assert result.returncode == 0, result.stderr
    assert "profile: flgc8-deployed, torch, batch 1" in result.stdout and "Self CPU" in result.stdout
    assert {r["runtime"] for r in last_json(result)["results"]} == {"torch"}


# Timing runs of every row (each a model built and stepped 4 times): a real process each, as a user runs them.
@pytest.mark.slow
def test_bench_train_variants_settings_and_projections():
    out = last_json(run_cli("benchmarks/bench_train.py", "--batch", "2", "--repeats", "1", "--json"))
    assert [r["variant"] for r in out["results"]] == ["dense", "sgc8", "flgc8", "flgc8-frozen",
                                                      "flgc8-frozen-grouped"]
    assert all(r["ms_per_step"] > 0 for r in out["results"])
    out = last_json(run_cli("benchmarks/bench_train.py", "--settings", "--only", "bf16 channels_last",
                            "--batch", "2", "--repeats", "1", "--json"))
    assert [r["setting"] for r in out["results"]] == ["bf16 channels_last"]
    out = last_json(run_cli("benchmarks/bench_train.py", "--projections", "--batch", "2", "--repeats", "1", "--json"))
    assert [r["timed"] for r in out["results"]] == ["whole step, dense model", "projections, dense",
                                                    "projections, 8 groups"]


@pytest.mark.slow
def test_bench_train_eager_and_inductor_modes():
    out = last_json(run_cli("benchmarks/bench_train.py", "--only", "flgc8", "--modes", "eager,inductor", "--batch", "2",
                            "--repeats", "1", "--json"))
    assert [r["variant"] for r in out["results"]] == ["flgc8 eager", "flgc8 inductor"]


@pytest.mark.slow
def test_bench_inference_resnet50_variants_and_rows():
    out = last_json(run_cli("benchmarks/bench_inference.py", "--model", "resnet50", "--size", "32", "--batch-sizes", "1",
                            "--repeats", "1", "--allocator", "reuse", "--json"))
    assert out["model"] == "resnet50" and out["size"] == 32 and out["allocator"] == "reuse" and out["native_kernels"] is True
    rows = {(r["variant"], r["runtime"]): r for r in out["results"]}
    variants = ["dense", "sgc8", "flgc8-masked", "flgc8-deployed", "flgc8-bound"]
    assert set(rows) == {(v, r) for v in variants for r in ("torch", "onnxruntime")}
    assert all(r["batch"] == 1 and r["ms"] > 0 for r in rows.values())
    # ONNX Runtime runs the faster of the deployed variant's two exported forms, and says which
    assert rows[("flgc8-deployed", "onnxruntime")]["form"] in ("conv", "contiguous")
    assert "form" not in rows[("dense", "onnxruntime")]
    # MACs: sgc8 and the bound compute the uniform-group 1x1s; the deployed form no more than dense
    assert rows[("sgc8", "torch")]["mflops"] == pytest.approx(rows[("flgc8-bound", "torch")]["mflops"])
    assert rows[("flgc8-deployed", "torch")]["mflops"] <= rows[("dense", "torch")]["mflops"]


def test_bench_inference_refuses_what_it_cannot_run(call):
    result = call("benchmarks/bench_inference.py", "--model", "resnet50", "--per-layer", "--device", "cpu")
    assert_usage_error(result, "--per-layer apply to --model mobilenetv2_cifar only")
    if not torch.cuda.is_available():
        assert_usage_error(call("benchmarks/bench_inference.py", "--device", "cuda"), "no CUDA device")


@pytest.mark.slow  # a whole process (about 4 s)
def test_bench_native_times_every_kernel_and_instruction_set():
    from flgc.deploy import native
    if not native.available():
        pytest.skip(f"compiled kernels not available: {native.unavailable_reason()}")
    out = last_json(run_cli("benchmarks/bench_native.py", "--batch-sizes", "1", "--repeats", "1", "--json"))
    rows = out["results"]
    stream = [r for r in rows if r["reference"] == "add_relu"]
    assert {r["shape"][1] for r in stream} == {256, 512, 1024, 2048}
    assert sum({r["shape"][1]: r["per_forward"] for r in stream}.values()) == 15
    kernels = {(r["kernel"], r["isa"]) for r in rows}
    assert {("add_relu", "torch"), ("torch_sum", "torch"), ("sum", "plain"), ("gather", "plain"),
            ("conv_torch", "torch")} <= kernels
    assert sum(r["per_forward"] for r in rows if r["kernel"] == "conv") == 33
    ends = [r for r in rows if r["reference"] == "conv_add_torch"]
    assert sum(r["per_forward"] for r in ends if r["kernel"] == "conv_sum") == 15
    assert {r["kernel"] for r in ends} == {"conv_sum", "conv_then_sum", "conv_add_torch"}
    assert all(r["ms"] > 0 for r in rows)


def test_bench_native_refuses_what_it_cannot_run(call):
    assert_usage_error(call("benchmarks/bench_native.py", "--repeats", "0"), "must be >= 1")
    assert_usage_error(call("benchmarks/bench_native.py", "--batch-sizes", "1,x"), "expected integers")


def test_assign_balanced_gives_every_group_its_share():
    model = assign_balanced(flgc.convert_model(MobileNetV2(), groups=8), seed=3)
    for _, layer in flgc_layers(model):
        in_sizes, out_sizes = layer.group_sizes()
        assert set(in_sizes.tolist()) == {layer.in_channels // 8} and set(out_sizes.tolist()) == {layer.out_channels // 8}


def test_the_bound_replaces_the_chosen_1x1_convs_of_every_block():
    dense = deploy.deploy_model(MobileNetV2().eval(), strategy="dense")
    bound = yardsticks.mobilenet_bound(copy.deepcopy(dense), 8, "both")
    slices = [name for name, m in bound.named_modules() if isinstance(m, yardsticks.SliceConv)]
    assert len(slices) == 17 + 16  # every projection, and the expand of the 16 blocks with t = 6
    assert all(bound.get_submodule(name).width == dense.get_submodule(name).in_channels // 8 for name in slices)


def test_the_runtime_settings_come_from_the_row_drivers_script(call):
    """bench_runtime.py times scripts/runtime_env.py's settings: what train_rows.sh trains with."""
    listed = run_cli("scripts/runtime_env.py", "--list").stdout.split()
    assert listed[0] == "default" and "iomp+tcmalloc" in listed
    assert json.loads(run_cli("scripts/runtime_env.py", "--json", "default").stdout) == {"environment": {}, "missing": []}
    assert_usage_error(call("benchmarks/bench_runtime.py", "--settings", "default,nope"), "unknown nope", "iomp+tcmalloc")
