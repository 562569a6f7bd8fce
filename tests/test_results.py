"""scripts/results_table.py and flgc/records/results.py: published rows next to local runs, --json, --plot,
the results table, released checkpoints, bad input."""
import hashlib
import json
import os
import pathlib
import runpy
import shutil
import sys

import matplotlib.pyplot as plt
import pytest
from helpers import ROOT, write_tiny_cifar

from flgc.engine import checkpoint, config, training
from flgc.errors import UsageError
from flgc.method import flops
from flgc.records import results

SCRIPT = os.path.join(ROOT, "scripts", "results_table.py")
ROOT_PATH = pathlib.Path(ROOT)
EMPTY = '{"checkpoints": []}'


def results_table(monkeypatch, capsys, *args):
    """(exit code, stdout, stderr) of the script run in this process."""
    monkeypatch.setattr(sys, "argv", [SCRIPT, *map(str, args)])
    code = 0
    try:
        runpy.run_path(SCRIPT, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-epoch runs (SGC8, FLGC8) on tiny generated data, and an empty manifest."""
    base = tmp_path_factory.mktemp("results")
    data = write_tiny_cifar(str(base / "data"), per_batch=8, test=12)
    paths = {}
    for name in ("mbv2_sgc8", "mbv2_flgc8"):
        cfg = config.load(os.path.join(ROOT, "configs", f"{name}.yaml"), config.parse_overrides([
            f"out_dir={base / name}", f"data.root={data}", "data.verify_checksums=false", "train.epochs=1",
            "train.batch_size=20", "train.progress=false", "flgc.logit_init_std=0.001", "flgc.init=random"]))
        training.fit(cfg)
        paths[name] = base / name
    manifest = base / "manifest.json"
    manifest.write_text(EMPTY)
    return paths, manifest, data


def rows_of(stdout):
    return {row["name"]: row for row in json.loads(stdout)["rows"]}


def test_table_has_the_published_rows_and_both_runs(runs, monkeypatch, capsys):
    paths, manifest, _ = runs
    code, out, err = results_table(monkeypatch, capsys, paths["mbv2_sgc8"], paths["mbv2_flgc8"], "--manifest", manifest,
                                   "--wide")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("| model | G | where | MMac | x dense | params | accuracy, % | accuracy source")
    body = [line for line in lines[2:] if line.startswith("|")]
    assert len(body) == 5
    assert "| 94.9 | 1.00 |" in body[0] and "| 94.43 | published |" in body[0]
    assert "| 76 | 1.25 |" in body[1] and "| 93.09 |" in body[1]
    assert "| 62.6 | 1.52 |" in body[2] and "| 93.7 |" in body[2] and "| 400 |" in body[2]
    assert body[3].startswith("| MobileNetV2-SGC | 8 | project | 62.62 | 1.52 | 1,453,034 |")
    assert body[4].startswith("| MobileNetV2-FLGC | 8 | project |") and "mbv2_flgc8" in body[4]
    assert "/7,136 inputs (" in body[4] and "/1,504 filters (" in body[4]  # moved from start
    assert "12 test images | - | SGD" in body[3]  # SGC: no learned groups to move
    assert "| evaluated | CIFAR-10 copy (re-encoded, md5 not verified), 12 test images |" in body[3]
    assert "lists no released checkpoints yet" in err


def test_short_table_gives_the_recipe_in_a_few_words(runs, monkeypatch, capsys):
    paths, manifest, _ = runs
    code, out, err = results_table(monkeypatch, capsys, paths["mbv2_sgc8"], "--manifest", manifest)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "| model | G | MMac | x dense | accuracy, % | images 0-999, % | recipe | source |"
    assert lines[2].endswith("| 94.43 | - | not stated | paper (Wang et al., CVPR 2019) |")
    assert "| 400 epochs, lr steps, a GPU |" in lines[4]
    assert lines[5].startswith("| MobileNetV2-SGC | 8 | 62.62 | 1.52 |") and lines[5].endswith("| mbv2_sgc8 |")


def test_the_brief_recipe_names_the_precision_a_row_trained_in():
    recipe = ("SGD nesterov 0.1, batch 128, cosine after a 1-epoch warm-up, wd 0.0005 (0 on norms and biases, 0 on "
              "depthwise), label smoothing 0.1, {}; 50,000 train images")
    row = results.Row(name="r", model="MobileNetV2", source="manifest", kind="manifest",
                      recipe=recipe.format("fp32, bf16 from epoch 40"), epochs=100,
                      hardware="2 CPU cores, AMD EPYC")
    assert results.brief_recipe(row) == "100 epochs, cosine, fp32/bf16, 2 CPU cores"
    row.recipe = recipe.format("bf16")
    assert results.brief_recipe(row) == "100 epochs, cosine, bf16, 2 CPU cores"
    row.accuracy, row.accuracy_source, row.accuracy_first_1000 = 90.1, "manifest", 92.0
    assert "| 90.10 | 92.00 |" in results.headline([row], 94.99)  # a release's figures keep two decimals


def test_json_rows_count_the_learned_structure_and_say_where_accuracy_comes_from(runs, monkeypatch, capsys):
    paths, manifest, _ = runs
    code, out, _ = results_table(monkeypatch, capsys, paths["mbv2_flgc8"], "--json", "--manifest", manifest)
    assert code == 0
    document = json.loads(out)  # stdout is exactly one JSON object
    rows = rows_of(out)
    assert [r["accuracy_source"] for r in document["rows"]] == ["published"] * 3 + ["evaluated"]
    ours = rows["mbv2_flgc8"]
    for key in ("name", "source", "mflops", "params", "accuracy", "ratio", "recipe", "epochs", "hardware"):
        assert key in ours, key
    model = checkpoint.load_model(str(paths["mbv2_flgc8"] / "best.pt")).model
    assert (ours["mflops"], ours["params"]) == pytest.approx(flops.count(model))
    assert ours["mflops"] != pytest.approx(62.62, abs=1e-3)  # a learned, non-uniform structure
    assert ours["ratio"] == pytest.approx(document["baseline_mflops"] / ours["mflops"])
    assert document["baseline_mflops"] == pytest.approx(94.99, abs=0.01)
    logged = json.loads((paths["mbv2_flgc8"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert ours["accuracy"] == pytest.approx(logged["test_accuracy"])  # evaluate() here reproduces training's figure
    moved = ours["moved_from_start"]  # counted against the seeded start, as training counted it
    assert (moved["moved_inputs"], moved["moved_filters"]) == (logged["moved_inputs"], logged["moved_filters"])
    assert moved["moved_inputs"] > 0 and moved["inputs"] == 7136
    assert ours["test_images"] == 12 and ours["epochs"] == "1"


def test_without_data_the_recorded_accuracy_is_used(runs, monkeypatch, capsys, tmp_path):
    paths, manifest, _ = runs
    trained_elsewhere = checkpoint.load(str(paths["mbv2_sgc8"] / "best.pt"))
    trained_elsewhere["config"]["data"]["root"] = str(tmp_path / "not-here")
    checkpoint.save(str(tmp_path / "elsewhere.pt"), trained_elsewhere)
    for args in ((tmp_path / "elsewhere.pt",), (paths["mbv2_sgc8"], "--no-eval")):
        code, out, _ = results_table(monkeypatch, capsys, *args, "--json", "--manifest", manifest)
        assert code == 0
        row = json.loads(out)["rows"][-1]
        assert row["accuracy_source"] == "recorded"
        recorded = json.loads((paths["mbv2_sgc8"] / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
        assert row["accuracy"] == recorded


def test_a_run_directory_stands_for_last_pt_and_a_best_pt_alone_is_labelled(runs, tmp_path):
    paths, manifest, _ = runs
    row = results.local_row(str(paths["mbv2_sgc8"]), evaluate=False)
    assert row.source == str(paths["mbv2_sgc8"] / "last.pt") and row.epochs == "1"  # the run as trained
    only_best = tmp_path / "only_best"
    only_best.mkdir()
    shutil.copy(paths["mbv2_sgc8"] / "best.pt", only_best / "best.pt")
    row = results.local_row(str(only_best), evaluate=False)
    assert row.source == str(only_best / "best.pt") and row.epochs == "1 (best epoch, chosen on the test set)"


def test_plot_writes_an_image_with_the_per_layer_panel_for_an_flgc_run(runs, monkeypatch, capsys, tmp_path):
    paths, manifest, _ = runs
    picture = tmp_path / "out" / "results.png"
    code, _, err = results_table(monkeypatch, capsys, paths["mbv2_flgc8"], "--no-eval", "--plot", picture,
                                 "--manifest", manifest)
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20000
    assert [p.name for p in picture.parent.iterdir()] == ["results.png"]  # no temp file left
    rows = results.collect(str(manifest), [str(paths["mbv2_flgc8"])], evaluate=False, baseline=94.99)
    assert len(rows[-1].per_layer) == 17
    assert sum(learned for _, learned, _ in rows[-1].per_layer) == pytest.approx(
        rows[-1].mflops - 62.62 + sum(uniform for _, _, uniform in rows[-1].per_layer), abs=0.01)
    both, published = results.figure(rows, 94.99), results.figure(rows[:3], 94.99)
    assert len(both.axes) == 2 and len(published.axes) == 1  # no learned structure: panel omitted
    assert "per-layer panel omitted" in published.texts[0].get_text()
    plt.close(both)
    plt.close(published)


def test_plot_labels_of_near_rows_stack_by_height_and_the_panel_shows_the_least_uniform_structure():
    layers = [("features.1.conv.0", 1.0, 1.0), ("features.2.conv.0", 2.0, 2.0)]
    rows = [results.Row("lower", "m", "s", "manifest", mflops=62.58, accuracy=90.26, per_layer=layers),
            results.Row("upper", "m", "s", "manifest", mflops=62.62, accuracy=90.47,
                        per_layer=[layers[0], ("features.2.conv.0", 2.5, 2.0)]),
            results.Row("apart", "m", "s", "manifest", mflops=94.99, accuracy=90.40),
            results.Row("edge-low", "m", "s", "manifest", mflops=94.99, accuracy=88.49),  # rounds to 88
            results.Row("edge-high", "m", "s", "manifest", mflops=94.99, accuracy=88.51)]  # and to 89
    fig = results.figure(rows, 94.99)
    cost, layer = fig.axes
    offsets = {t.get_text(): t.xyann[1] for t in cost.texts}
    assert offsets["upper"] > offsets["lower"]  # drawn first, the lower row's label still goes below
    assert offsets["edge-high"] > offsets["edge-low"]  # near, though their rounded values differ
    assert offsets["apart"] == offsets["upper"]  # a row elsewhere is not pushed down
    assert "of upper:" in layer.get_title()  # moved 0.5 MMac away from uniform; "lower" is uniform
    plt.close(fig)


@pytest.mark.parametrize("page, marker, flags", [("README.md", "results-table", ()),
                                                 ("docs/results.md", "results-table-wide", ("--wide",))])
def test_committed_tables_are_the_output_for_the_committed_manifest(page, marker, flags, monkeypatch, capsys):
    code, out, err = results_table(monkeypatch, capsys, "--no-eval", *flags)
    assert code == 0, err
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    assert results.splice(text, marker, out.rstrip("\n")) == text, "regenerate: python scripts/results_table.py --write-pages"


def test_write_pages_puts_both_tables_between_the_markers_and_nothing_else(tmp_path, monkeypatch, capsys):
    pages = {page: (ROOT_PATH / page).read_text(encoding="utf-8") for page, _, _ in results.PAGES}
    stale = {page: results.splice(pages[page], marker, "| an old table |") for page, marker, _ in results.PAGES}
    (tmp_path / "docs").mkdir()
    for page, text in stale.items():
        assert text != pages[page]
        (tmp_path / page).write_text(text, encoding="utf-8")
    code, _, err = results_table(monkeypatch, capsys, "--write-pages", "--pages-root", tmp_path)
    assert code == 0 and "rewrote" in err, err
    assert {page: (tmp_path / page).read_text(encoding="utf-8") for page in pages} == pages
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["README.md", "docs", "results.md"]  # no temp file left
    for page, text in stale.items():
        (tmp_path / page).write_text(text, encoding="utf-8")
    (tmp_path / "docs" / "results.md").write_text("no markers\n")  # the second page fails: the first stays too
    code, _, err = results_table(monkeypatch, capsys, "--write-pages", "--pages-root", tmp_path,
                                 "--plot", tmp_path / "plot.png")
    assert code == 2 and err.count("\n") == 1 and "results-table-wide:start" in err, err
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == stale["README.md"]
    assert not (tmp_path / "plot.png").exists()  # nothing is drawn before the pages are known to take the tables
    code, _, err = results_table(monkeypatch, capsys, "--write-pages", "--wide", "--pages-root", tmp_path)
    assert code == 2 and "manifest's rows only" in err


def test_splice_replaces_only_what_stands_between_the_markers():
    page = "intro\n<!-- t:start -->\n| old |\n<!-- t:end -->\nrest\n"
    assert results.splice(page, "t", "| new |") == "intro\n<!-- t:start -->\n| new |\n<!-- t:end -->\nrest\n"
    assert results.splice("<!-- t:start -->\n<!-- t:end -->", "t", "| a |") == "<!-- t:start -->\n| a |\n<!-- t:end -->"
    for broken in ("<!-- t:end -->\n<!-- t:start -->\n", "<!-- t:start -->\n", page + page):
        with pytest.raises(UsageError, match="expected one '<!-- t:start -->' line"):
            results.splice(broken, "t", "| new |")


def test_released_checkpoint_is_counted_when_present_and_taken_from_the_manifest_when_not(runs, tmp_path, capsys):
    paths, _, _ = runs
    release = tmp_path / "checkpoints"
    release.mkdir()
    shutil.copy(paths["mbv2_flgc8"] / "best.pt", release / "flgc8.pt")
    blob = (release / "flgc8.pt").read_bytes()
    entry = {"name": "flgc8", "file": "flgc8.pt", "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
             "accuracy": 93.5, "mflops": 62.7, "params": 1, "recipe": "fast", "epochs": 30, "hardware": "1 GPU",
             "minutes": 600.0, "median_epoch_s": 19.6}
    absent = dict(entry, name="sgc8", file="sgc8.pt", config="configs/mbv2_sgc8.yaml")
    (tmp_path / "configs").mkdir()
    shutil.copy(os.path.join(ROOT, "configs", "mbv2_sgc8.yaml"), tmp_path / "configs")
    (release / "manifest.json").write_text(json.dumps({"checkpoints": [entry, absent]}))
    rows = {r.name: r for r in results.collect(str(release / "manifest.json"), evaluate=False, baseline=94.99)}
    present, missing = rows["flgc8"], rows["sgc8"]
    assert present.kind == "manifest" and present.accuracy_source == "manifest" and present.accuracy == 93.5
    assert present.params > 1_000_000 and present.per_layer and present.epochs == "30"
    assert (missing.mflops, missing.params, missing.per_layer) == (62.7, 1, [])
    assert "1 GPU; 600.0 min (median epoch 20 s)" in results.markdown_cells(missing)
    assert (missing.model, missing.groups, missing.where) == ("MobileNetV2-SGC", 8, "project")  # from its config
    assert "sgc8.pt is not here" in capsys.readouterr().err


@pytest.mark.parametrize("make_args, fragment", [
    (lambda tmp, runs: [tmp / "nowhere"], "does not exist"),
    (lambda tmp, runs: [tmp], "holds no last.pt or best.pt"),
    (lambda tmp, runs: [tmp / "garbage.pt"], "cannot be loaded"),
    (lambda tmp, runs: [runs["mbv2_sgc8"], "--plot", tmp / "x.jpg"], "allowed file types are"),
    (lambda tmp, runs: [runs["mbv2_sgc8"], f"data.root={tmp}"], "no CIFAR-10 python-version files"),
    (lambda tmp, runs: [runs["mbv2_sgc8"], "train.epochs=3"], "cannot override 'train.epochs'"),
    (lambda tmp, runs: [runs["mbv2_sgc8"], "data.std=[1,1,1]"], "cannot override 'data.std'"),
])
def test_bad_input_is_one_line_and_exit_code_2(runs, monkeypatch, capsys, tmp_path, make_args, fragment):
    paths, manifest, _ = runs
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    code, out, err = results_table(monkeypatch, capsys, *make_args(tmp_path, paths), "--manifest", manifest)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
