"""`pip install -e .` is the core (train, eval, count_flops, TensorBoard); what needs an extra says so in
one line (exit code 2) naming the extra to install, while the arguments are checked, before any work."""
import os

import pytest
from helpers import ROOT, assert_usage_error

from flgc import extras
from flgc.deploy import native
from flgc.errors import UsageError

PLOT, DEPLOY = 'pip install -e ".[plot]"', 'pip install -e ".[deploy]"'


@pytest.fixture
def hide(monkeypatch):
    """hide(*modules): extras.installed says these are missing."""
    def hide_modules(*modules):
        real = extras.installed
        monkeypatch.setattr(extras, "installed", lambda module: module not in modules and real(module))
    return hide_modules


def test_require_names_the_extra_to_install(monkeypatch):
    assert extras.installed("yaml") and not extras.installed("no_such_module_here")
    extras.require("yaml", "anything")  # installed: nothing to say
    monkeypatch.setitem(extras.EXTRA_OF, "no_such_module_here", "deploy")
    with pytest.raises(UsageError, match=r'^ONNX export needs no_such_module_here, which is not installed: '
                                         r'pip install -e "\.\[deploy\]"$'):
        extras.require("no_such_module_here", "ONNX export")


def test_onnx_export_without_onnx_is_one_line_before_the_checkpoint_is_read(hide, call, tmp_path):
    hide("onnx")
    result = call("scripts/export.py", "--checkpoint", tmp_path / "none.pt", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert_usage_error(result, "ONNX export needs onnx", DEPLOY)
    result = call("scripts/export.py", "--checkpoint", tmp_path / "none.pt", "--format", "torchscript",
                  "--out", tmp_path / "m.pt")
    assert_usage_error(result, "does not exist")  # TorchScript needs no extra


def test_onnx_runtime_timing_without_onnxruntime_is_one_line(hide, call):
    hide("onnxruntime")
    assert_usage_error(call("benchmarks/bench_inference.py", "--batch-sizes", "1"), "--runtimes onnxruntime", DEPLOY)


def test_plots_without_matplotlib_are_one_line_before_any_work(hide, call, tmp_path):
    hide("matplotlib")
    assert_usage_error(call("scripts/results_table.py", "--no-eval", "--plot", tmp_path / "p.png"), "--plot", PLOT)
    assert_usage_error(call("scripts/plot_groups.py", tmp_path / "none.pt", "--out", tmp_path / "g.png"), PLOT)
    out = tmp_path / "run"
    result = call("train.py", "--config", os.path.join(ROOT, "configs", "mbv2_flgc8.yaml"), f"out_dir={out}",
                  f"data.root={tmp_path / 'no-data'}", "data.download=false", "flgc.plot_interval=1")
    assert_usage_error(result, "flgc.plot_interval", PLOT)
    assert not out.exists()


def test_the_native_strategy_without_ninja_or_a_compiler_is_one_line(monkeypatch, call, tmp_path):
    ckpt = tmp_path / "none.pt"
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: no ninja
    assert native.missing_tools().startswith("ninja is not installed")
    result = call("scripts/deploy.py", "--checkpoint", ckpt, "--out", tmp_path / "d.pt", "--strategy", "native")
    assert_usage_error(result, "--strategy native needs flgc's compiled kernels: ninja", DEPLOY)
    assert_usage_error(call("benchmarks/bench_native.py"), "bench_native.py needs flgc's compiled kernels", DEPLOY)
    monkeypatch.undo()
    if native.missing_tools().startswith("ninja"):
        pytest.skip("no ninja here: the compiler check is not reached")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    result = call("scripts/deploy.py", "--checkpoint", ckpt, "--out", tmp_path / "d.pt", "--strategy", "native")
    assert_usage_error(result, "no C++ compiler", "g++")
    # the default strategy needs no kernels: the checkpoint is what is missing
    assert_usage_error(call("scripts/deploy.py", "--checkpoint", ckpt, "--out", tmp_path / "d.pt"), "does not exist")
