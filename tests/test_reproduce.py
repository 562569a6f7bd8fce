"""scripts/reproduce_gpu.sh's last step: slimmed checkpoints and one results JSON, from a tiny run."""
import json

from helpers import assert_usage_error, write_tiny_cifar

from flgc.engine import checkpoint, config, training


def test_results_slim_checkpoints_and_report_each_row(tmp_path, call):
    data = write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    cfg = config.load("configs/fast/mbv2_flgc8.yaml", config.parse_overrides(
        [f"data.root={data}", "data.verify_checksums=false", "train.batch_size=16", "train.eval_batch_size=16",
         "train.epochs=1", "train.warmup_epochs=0", "train.progress=false", "train.compile=none",
         f"out_dir={tmp_path / 'mbv2_flgc8'}"]))
    training.fit(cfg)
    result = call("scripts/reproduce_results.py", str(tmp_path), "mbv2_flgc8:90")
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["mbv2_flgc8"] and rows[0]["minutes"] == 1.5
    slim = checkpoint.load(str(tmp_path / "mbv2_flgc8.pt"))
    assert set(slim) == {"format_version", "config", "model", "metrics"}
    assert rows[0]["accuracy"] == slim["metrics"]["test_accuracy"] and 50 < rows[0]["mflops"] < 75
    assert (tmp_path / "mbv2_flgc8.pt").stat().st_size < 16 * 2**20
    assert_usage_error(call("scripts/reproduce_results.py", str(tmp_path), "mbv2_flgc8:soon"), "NAME:SECONDS")
