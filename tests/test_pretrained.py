"""Released checkpoints by name: flgc.create_model(NAME, pretrained=True), torch.hub, eval.py and
count_flops.py with a released name; flip test-time augmentation."""
import json
import os
import shutil

import pytest
import torch
from helpers import ROOT, assert_usage_error, load_script, run_captured, write_tiny_cifar

import flgc
from flgc.engine import checkpoint, config, evaluation
from flgc.records import pretrained
from flgc.records.manifest import load_manifest

MANIFEST = os.path.join(ROOT, "checkpoints", "manifest.json")
RELEASED = [entry["name"] for entry in load_manifest(MANIFEST)]
pytestmark = pytest.mark.skipif(not RELEASED, reason="checkpoints/manifest.json lists no release")


def test_released_names_are_the_manifests_in_order():
    assert flgc.released_names() == RELEASED


def test_pretrained_model_has_the_released_weights():
    name = RELEASED[-1]
    model = flgc.create_model(name, pretrained=True)
    saved = torch.load(pretrained.released_path(name), weights_only=True)["model"]
    assert model.training
    state = model.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)


def test_unpretrained_release_is_its_architecture_with_fresh_weights():
    name = RELEASED[-1]
    fresh, released = flgc.create_model(name), flgc.create_model(name, pretrained=True)
    shapes = {k: v.shape for k, v in released.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    assert not torch.equal(fresh.classifier.weight, released.classifier.weight)


def test_architectures_and_unknown_names():
    assert type(flgc.create_model("mobilenetv2_cifar", pointwise="group")).__name__ == "MobileNetV2"
    with pytest.raises(ValueError, match="released by name"):
        flgc.create_model("mobilenetv2_cifar", pretrained=True)
    with pytest.raises(KeyError, match="released checkpoints"):
        flgc.create_model("no_such_model")
    with pytest.raises(flgc.errors.UsageError, match="takes no options"):
        flgc.create_model(RELEASED[0], num_classes=100)


def test_a_file_that_does_not_match_its_sha256_is_refused(tmp_path):
    entry = load_manifest(MANIFEST)[0]
    shutil.copy(MANIFEST, tmp_path / "manifest.json")
    with open(tmp_path / entry["file"], "wb") as f:
        f.write(b"\0" * entry["bytes"])  # right size, wrong bytes
    with pytest.raises(flgc.errors.UsageError, match="does not match its sha256"):
        pretrained.released_model(entry["name"], manifest=str(tmp_path / "manifest.json"))


def test_torch_hub_loads_a_release_from_the_repository():
    name = RELEASED[0]
    model = torch.hub.load(ROOT, name, source="local", pretrained=True)
    expected = flgc.create_model(name, pretrained=True).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_cifar(str(tmp_path_factory.mktemp("data")), per_batch=8, test=24)


def test_eval_takes_a_released_name_and_reports_flip_apart(tiny_data):
    overrides = [f"data.root={tiny_data}", "data.verify_checksums=false"]
    row = json.loads(run_captured("eval.py", "--checkpoint", RELEASED[-1], *overrides, "--tta", "flip", "--json")
                     .stdout.strip().splitlines()[-1])
    model, cfg, _ = checkpoint.load_model(pretrained.released_path(RELEASED[-1]), config.parse_overrides(overrides))
    plain, flip = evaluation.test_metrics(model, cfg), evaluation.test_metrics(model, cfg, tta="flip")
    assert row["images"] == 24 and (row["accuracy"], row["loss"]) == (plain["accuracy"], plain["loss"])
    assert (row["accuracy_flip"], row["loss_flip"]) == (flip["accuracy"], flip["loss"]) and flip["loss"] != plain["loss"]
    assert_usage_error(run_captured("eval.py", "--checkpoint", "no_such_release"), "no released checkpoint",
                       RELEASED[0])


def test_count_flops_compares_the_released_rows_by_default():
    sources = load_script("count_flops.py").default_sources()
    assert list(sources)[:len(RELEASED)] == RELEASED
    assert "configs/cpu/mbv2_flgc8.yaml" in sources and "configs/cpu-long/mbv2_baseline.yaml" in sources
    result = run_captured("count_flops.py", "--compare", RELEASED[-1], "configs/cpu/mbv2_sgc8.yaml", "--json")
    rows = json.loads(result.stdout)["rows"]
    entry = {e["name"]: e for e in load_manifest(MANIFEST)}[RELEASED[-1]]
    assert rows[0]["name"] == RELEASED[-1] and rows[0]["mflops"] == pytest.approx(entry["mflops"], abs=1e-4)
    assert rows[1]["config"] == "configs/cpu/mbv2_sgc8.yaml"


def test_flip_averages_the_softmax_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        mean = (model(images).softmax(1) + model(images.flip(3)).softmax(1)) / 2
    result = evaluation.evaluate(model, [(images, labels)], tta="flip")
    assert result["loss"] == pytest.approx(-mean[torch.arange(6), labels].log().mean().item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx(100 * (mean.argmax(1) == labels).float().mean().item())
    assert evaluation.evaluate(model, [(images, labels)])["loss"] != pytest.approx(result["loss"])


def test_moves_from_start_counts_exactly_the_channels_moved(tmp_path):
    from flgc.engine import checkpoint as ckpt
    from flgc.method.layer import flgc_layers
    from flgc.models import build_model
    flgc8 = next(e for e in load_manifest(MANIFEST) if e.get("groups"))
    payload = ckpt.load(pretrained.released_path(flgc8["name"]))
    cfg = config.from_dict(payload["config"])
    torch.manual_seed(cfg.seed)
    start = build_model(cfg)
    name, layer = flgc_layers(start)[3]
    with torch.no_grad():
        groups = layer.input_groups()
        for channel in range(5):  # 5 input channels to the next group: their largest logit moves there
            layer.input_group_logits[channel, (groups[channel] + 1) % layer.groups] = layer.input_group_logits[channel].max() + 1
    ckpt.save(str(tmp_path / "moved.pt"), dict(payload, model=start.state_dict()))
    result = run_captured("scripts/assignment_changes.py", "--from-start", tmp_path / "moved.pt", "--json")
    report = json.loads(result.stdout)
    assert report["layers"][name]["moved_inputs"] == 5 and report["total"]["moved_inputs"] == 5
    assert report["total"]["moved_filters"] == 0 and "0.07% of the input channels" in result.stderr
