"""Deploy and export through the entry points (in this process); ONNX Runtime and TorchScript parity <= 1e-4."""
import json

import numpy as np
import pytest
import torch
from helpers import assert_usage_error, randomise

from flgc.engine import checkpoint, config
from flgc.models import build_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training checkpoint of MobileNetV2-FLGC8 (expand+projection) with non-uniform groups."""
    path = tmp_path_factory.mktemp("export") / "flgc8both.pt"
    cfg = config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(["flgc.where=both", "flgc.logit_init_std=1"]))
    torch.manual_seed(0)
    model = randomise(build_model(cfg), 0)
    checkpoint.save(str(path), {"config": config.to_dict(cfg), "model": model.state_dict(), "epoch": 1,
                                "best_accuracy": 10.0})
    return path, model


def test_deploy_then_eval_matches_the_training_checkpoint(trained, tiny_data, tmp_path, call):
    path, _ = trained
    out = tmp_path / "deployed.pt"
    result = call("scripts/deploy.py", "--checkpoint", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    reports = []
    for ckpt in (path, out):
        evaluated = call("eval.py", "--checkpoint", str(ckpt), f"data.root={tiny_data}",
                            "data.verify_checksums=false", "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        reports.append(json.loads(evaluated.stdout.strip().splitlines()[-1]))
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    assert reports[0]["loss"] == pytest.approx(reports[1]["loss"], abs=1e-4)
    again = call("scripts/deploy.py", "--checkpoint", str(path), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    into_folder = call("scripts/deploy.py", "--checkpoint", str(path), "--out", str(tmp_path), "--force")
    assert_usage_error(into_folder, "is a directory; give the path of a file")


def test_onnx_runtime_parity(trained, tmp_path, call):
    ort = pytest.importorskip("onnxruntime")
    path, model = trained
    out = tmp_path / "model.onnx"
    result = call("scripts/export.py", "--checkpoint", str(path), "--format", "onnx", "--out", str(out))
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow  # the fast suite checks the ONNX export of the same deployed model
def test_torchscript_parity(trained, tmp_path, call):
    path, model = trained
    out = tmp_path / "model.ts"
    result = call("scripts/export.py", "--checkpoint", str(path), "--format", "torchscript", "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded = torch.jit.load(str(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (loaded(x) - model.eval()(x)).abs().max() <= 1e-4


def test_deploy_export_and_plot_take_a_released_name(tmp_path, call):
    out = tmp_path / "deployed.pt"
    result = call("scripts/deploy.py", "--checkpoint", "mbv2_sgc8_cpu", "--out", out, "--strategy", "conv")
    assert result.returncode == 0 and "deployed mbv2_sgc8_cpu" in result.stdout, result.stderr
    assert checkpoint.load_model(str(out))[2]["source"].startswith("mbv2_sgc8_cpu")
    for script, args in (("scripts/deploy.py", ("--out", tmp_path / "d.pt")),
                         ("scripts/export.py", ("--format", "onnx", "--out", tmp_path / "m.onnx")),
                         ("scripts/plot_groups.py", ("--out", tmp_path / "g.png"))):
        name = ("mbv2_flgc99",) if script.endswith("plot_groups.py") else ("--checkpoint", "mbv2_flgc99")
        assert_usage_error(call(script, *name, *args), "mbv2_flgc99", "no released checkpoint of that name")
    assert list(tmp_path.iterdir()) == [out]
