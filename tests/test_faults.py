"""Faults: bit-exact resume, SIGTERM, NaN loss, kill -9 during a save, and 2-process training."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from helpers import ROOT, run_cli, write_tiny_cifar

from flgc.engine import checkpoint, config, training
from flgc.engine.optim import build_scheduler
from flgc.engine.step import EpochSums
from flgc.errors import UsageError


def tiny_cfg(tmp_path, out, *overrides):
    root = tmp_path / "data"
    if not root.exists():
        write_tiny_cifar(str(root), per_batch=8, test=8)
    return config.load("configs/mbv2_flgc8.yaml", config.parse_overrides(
        [f"data.root={root}", "data.verify_checksums=false", "train.batch_size=8", "train.eval_batch_size=8",
         "train.progress=false", f"out_dir={tmp_path / out}", "train.milestones=[1]", *overrides]))


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """Runs of tiny_cfg trained once for the module, by epoch count: several tests start from the same run."""
    base, runs = tmp_path_factory.mktemp("trained"), {}

    def run(epochs):
        if epochs not in runs:
            training.fit(tiny_cfg(base, f"run{epochs}", f"train.epochs={epochs}"))
            runs[epochs] = base / f"run{epochs}"
        return runs[epochs]
    return run


@pytest.fixture
def trained(tmp_path, trained_once, capsys):
    """trained(epochs, out="run"): tmp_path/out, a copy of tiny_cfg's run directory after `epochs` epochs
    (what training.fit(tiny_cfg(tmp_path, out, f"train.epochs={epochs}")) writes); its output is discarded."""
    def copy(epochs, out="run"):
        shutil.copytree(trained_once(epochs), tmp_path / out)
        capsys.readouterr()
        return tmp_path / out
    return copy


def parameters(path):
    return checkpoint.load(str(path))["model"]


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_after_an_epoch_is_bit_exact(tmp_path, trained):
    straight, _ = trained(2, "straight"), trained(1, "split")
    training.fit(tiny_cfg(tmp_path, "split", "train.epochs=2"), resume="auto")
    assert_identical(parameters(straight / "last.pt"), parameters(tmp_path / "split" / "last.pt"))


def sigterm_after(adds, monkeypatch):
    """Send this process SIGTERM from inside the training loop after `adds` steps in all."""
    calls = {"n": 0}
    add = EpochSums.add

    def counting(self, *args):
        add(self, *args)
        calls["n"] += 1
        if calls["n"] == adds:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(EpochSums, "add", counting)


def test_stop_inside_an_epoch_saves_and_resumes_bit_exact(tmp_path, monkeypatch, capsys, trained):
    trained(2, "straight")
    sigterm_after(7, monkeypatch)  # 5 steps an epoch: epoch 2, after its step 2
    with pytest.raises(training.Interrupted) as stopped:
        training.fit(tiny_cfg(tmp_path, "split", "train.epochs=2"))
    assert stopped.value.code == 143
    assert "stopped by SIGTERM in epoch 2 after step 2 of 5" in capsys.readouterr().out
    saved = checkpoint.load(str(tmp_path / "split" / "last.pt"))
    assert saved["epoch"] == 1 and saved["step"] == 2 and saved["epoch_elapsed_s"] > 0
    saved["epoch_elapsed_s"] = 1000.0  # as if the steps before the stop had taken that long
    checkpoint.save(str(tmp_path / "split" / "last.pt"), saved)
    monkeypatch.undo()
    started = time.time()
    training.fit(tiny_cfg(tmp_path, "split", "train.epochs=2"), resume="auto")
    resumed_s = time.time() - started
    assert "resumed from" in capsys.readouterr().out.splitlines()[0]
    assert_identical(parameters(tmp_path / "straight" / "last.pt"), parameters(tmp_path / "split" / "last.pt"))
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["train_loss"] == json.loads(straight[-1])["train_loss"]
    # the time before the stop counts, once, with the resumed steps' own
    assert 1000.0 < json.loads(rows[-1])["epoch_time_s"] <= 1000.0 + resumed_s + 0.01


def test_an_epoch_resumed_inside_logs_the_lr_of_its_first_step():
    cfg = config.load("configs/cpu-long/mbv2_flgc8.yaml", config.parse_overrides(["train.epochs=4"]))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg.train, 10)
    for _ in range(20):  # epochs 1 and 2 of 10 steps: epoch 3 starts here
        optimizer.step()
        scheduler.step()
    at_start = optimizer.param_groups[0]["lr"]
    for _ in range(7):  # the steps of epoch 3 before a stop
        optimizer.step()
        scheduler.step()
    run = types.SimpleNamespace(optimizer=optimizer, scheduler=scheduler, start_step=7)
    assert optimizer.param_groups[0]["lr"] < at_start  # cosine: the lr fell inside the epoch
    assert training.epoch_start_lr(run, resumed_inside=True) == pytest.approx(at_start, rel=1e-12)
    run.start_step = 0
    assert training.epoch_start_lr(run, resumed_inside=False) == optimizer.param_groups[0]["lr"]


def test_a_stop_inside_epoch_1_keeps_the_budget_moves_and_a_resume_the_fp16_loss_scale(tmp_path, monkeypatch):
    """The starting projection's moves belong to epoch 1's row, also when epoch 1 is resumed; fp16's loss
    scale (lowered by overflowing steps) goes on after a resume instead of starting again at 2^16."""
    budget = ["flgc.regularizer.kind=budget", "flgc.regularizer.target_mflops=62.6", "train.epochs=1"]
    straight = training.fit(tiny_cfg(tmp_path, "straight", *budget))
    assert straight["budget_moves"] > 0
    sigterm_after(2, monkeypatch)
    with pytest.raises(training.Interrupted):
        training.fit(tiny_cfg(tmp_path, "split", *budget))
    monkeypatch.undo()
    saved = checkpoint.load(str(tmp_path / "split" / "last.pt"))
    assert saved["step"] == 2 and saved["budget_moves"] > 0 and "scaler" not in saved
    resumed = training.fit(tiny_cfg(tmp_path, "split", *budget), resume="auto")
    assert resumed["budget_moves"] == straight["budget_moves"]
    # fp16 (slow on a CPU, so no steps here): the scaler's state travels with the checkpoint
    fp16 = tiny_cfg(tmp_path, "fp16", *budget, "train.amp=fp16")
    saved["scaler"] = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3).state_dict()
    run = training.Run(fp16, saved, "last.pt")
    assert run.scaler.get_scale() == 1024.0 and run.scaler.get_growth_interval() == 3
    assert run.payload(0, 2, run.epoch_sums, saved["epoch_start_assignments"])["scaler"]["scale"] == 1024.0


@pytest.mark.slow
def test_an_epoch_resumed_on_other_hardware_lists_both_in_its_row_and_release(tmp_path, monkeypatch):
    from flgc.engine import provenance
    from flgc.records import releases, results
    sigterm_after(2, monkeypatch)  # epoch 1, after its step 2
    with pytest.raises(training.Interrupted):
        training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2"))
    monkeypatch.undo()
    first = checkpoint.load(str(tmp_path / "run" / "last.pt"))["epoch_provenance"][0]["hardware"]
    monkeypatch.setattr(provenance, "hardware", lambda device, threads=None: "another machine")
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2"), resume="auto")
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["hardware"] for r in rows] == ["another machine", "another machine"] and first != "another machine"
    assert [p["hardware"] for p in rows[0]["epoch_provenance"]] == [first, "another machine"]
    assert "epoch_provenance" not in rows[1]  # an epoch one process trained whole
    assert releases.provenance_of(str(tmp_path / "run"), 2).hardware == f"{first}; another machine"
    assert results.local_row(str(tmp_path / "run"), evaluate=False).hardware == f"{first}; another machine"


def test_stop_and_resume_messages_count_alike(tmp_path, monkeypatch, capsys):
    sigterm_after(3, monkeypatch)
    # the command line the run was started with: the hint repeats it with --resume auto
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", "configs/mbv2_flgc8.yaml", "--resume", "x.pt",
                                      f"out_dir={tmp_path / 'my run'}", "train.epochs=1"])
    with pytest.raises(training.Interrupted):
        training.fit(tiny_cfg(tmp_path, "run", "train.epochs=1"))
    stop = capsys.readouterr().out
    monkeypatch.undo()
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=1"), resume="auto")
    resume = capsys.readouterr().out
    assert "stopped by SIGTERM in epoch 1 after step 3 of 5" in stop
    assert stop.rstrip().endswith(f"Resume with: python train.py --config configs/mbv2_flgc8.yaml "
                                  f"'out_dir={tmp_path / 'my run'}' train.epochs=1 --resume auto")
    assert "resumed from" in resume and resume.splitlines()[0].endswith("in epoch 1 after step 3 of 5")


def test_the_resume_command_repeats_the_command_line(monkeypatch):
    assert training.resume_command(["train.py", "--config", "c.yaml", "--resume=auto", "seed=1"]) == \
        "python train.py --config c.yaml seed=1 --resume auto"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert training.resume_command(["/repo/train.py", "--config", "c.yaml"], world=2) == \
        "torchrun --standalone --nproc_per_node=2 /repo/train.py --config c.yaml --resume auto"
    assert training.resume_command(["pytest", "-q"]) is None  # fit() called from Python: no command line to repeat


def test_a_process_that_did_not_receive_the_signal_stops_with_its_code(tmp_path, monkeypatch, capsys):
    """Under torchrun the signal may reach one process only: the others learn its number with the stop flag
    and exit 143 as it does (not ValueError from signal.Signals(None))."""
    run = types.SimpleNamespace(world=2, main=False, device=torch.device("cpu"), stop=training.StopRequest(),
                                saved_at=None, train_batches=[])

    def other_rank_got_sigterm(flags):
        return torch.maximum(flags, torch.tensor([0.0, float(signal.SIGTERM)]))
    monkeypatch.setattr(training.distributed, "max_over_processes", other_rank_got_sigterm)
    finite, stop = training.Run.pause_flags(run)
    assert finite and stop and run.stop.signal == signal.SIGTERM
    with pytest.raises(training.Interrupted) as stopped:
        training._stopped(run, 1)
    assert stopped.value.code == 143


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys, trained):
    trained(1)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").iterdir()}
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=1", "threads=1"), resume="auto")
    assert "is complete: 1 of 1 epochs trained; nothing to do" in capsys.readouterr().out
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").iterdir()}
    assert after == before


def test_a_row_lost_between_the_epoch_checkpoint_and_the_log_is_restored_on_resume(tmp_path, capsys, trained):
    run = trained(2)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(rows[0] + "\n")  # as if killed after epoch 2's checkpoint, before its row
    for events in run.glob("events.out.tfevents.*"):  # TensorBoard is written after the row: it lacks epoch 2 too
        events.unlink()
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2"), resume="auto")
    out = capsys.readouterr().out
    assert "lacked the row of epoch 2" in out and "is complete" in out
    assert [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()] == [json.loads(r) for r in rows]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logged = EventAccumulator(str(run)).Reload().Scalars("train_loss")
    assert [s.step for s in logged] == [2]  # TensorBoard keeps float32
    assert logged[0].value == pytest.approx(json.loads(rows[1])["train_loss"], rel=1e-6)
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2"), resume="auto")  # restored once, never twice
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and "lacked" not in capsys.readouterr().out


def test_a_lost_first_row_is_restored_but_never_into_another_runs_log(tmp_path, capsys, trained):
    run = trained(1)
    row = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").unlink()  # killed after epoch 1's checkpoint: the log did not exist yet
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=1"), resume="auto")
    assert "lacked the row of epoch 1" in capsys.readouterr().out
    assert json.loads((run / "metrics.jsonl").read_text()) == json.loads(row)
    other = tmp_path / "other"  # a new run started from this run's checkpoint keeps its own, empty log
    training.fit(tiny_cfg(tmp_path, "other", "train.epochs=1"), resume=str(run / "last.pt"))
    assert "lacked" not in capsys.readouterr().out and not (other / "metrics.jsonl").exists()


@pytest.mark.parametrize("override", ["data.train_subset=24", "flgc.gradient=reference_masked", "flgc.regularizer.weight=0.5",
                                      "train.lr=0.2", "train.schedule=cosine",
                                      "train.label_smoothing=0.1", "seed=1"])
def test_resume_that_would_change_what_was_trained_is_refused(tmp_path, override, trained):
    trained(1)
    last = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(UsageError, match=f"cannot resume .* with {override.split('=')[0]}="):
        training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2", override), resume="auto")
    assert (tmp_path / "run" / "last.pt").read_bytes() == last


def test_extended_run_keeps_config_yaml_describing_the_checkpoint(tmp_path, trained):
    trained(1)
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2", "threads=1", "train.checkpoint_steps=2"), resume="auto")
    saved = checkpoint.load(str(tmp_path / "run" / "last.pt"))
    described = config.load(str(tmp_path / "run" / "config.yaml"))
    assert saved["epoch"] == 2 and config.to_dict(described) == saved["config"]
    # the change of train.epochs is recorded where a release reads it: the checkpoint and the metrics rows
    change = {"from": 1, "to": 2, "epoch": 1, "step": 0}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert saved["epochs_changes"] == [change] and [r.get("epochs_changes") for r in rows] == [None, [change]]


def test_epoch_summaries_say_no_best_before_any_evaluation(tmp_path, capsys):
    training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2", "train.eval_interval=2"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert "test -  best -  lr" in lines[0] and "best 0.00%" not in lines[0]
    assert "best -" not in lines[1]
    assert checkpoint.load(str(tmp_path / "run" / "best.pt"))["epoch"] == 2


@pytest.mark.parametrize("every, saves, window", [(50, 0, "between steps 1 and 5 of 5"), (2, 2, "between steps 1 and 2 of 5")])
def test_nan_loss_names_epoch_and_step_window_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, every, saves, window,
                                                                               trained):
    trained(1)
    good = (tmp_path / "run" / "last.pt").read_bytes()
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, logits, labels: logits.sum() * float("nan"))
    with pytest.raises(training.Diverged, match=f"epoch 2 {window}"):
        training.fit(tiny_cfg(tmp_path, "run", "train.epochs=2", f"train.finite_check_steps={every}",
                            f"train.checkpoint_steps={saves}"), resume="auto")
    assert (tmp_path / "run" / "last.pt").read_bytes() == good


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path):
    write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    args = ["train.py", "--config", "configs/mbv2_flgc8.yaml", f"out_dir={tmp_path / 'run'}",
            f"data.root={tmp_path / 'data'}", "data.verify_checksums=false", "train.batch_size=8",
            "train.progress=false", "train.epochs=1000", "threads=1"]
    env = dict(os.environ)
    child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert "Resume with" in out and "--resume auto" in out
    assert checkpoint.load(str(tmp_path / "run" / "last.pt"))["epoch"] >= 1
    resumed = run_cli(*args[:-1], "train.epochs=3", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(str(tmp_path / "run" / "last.pt"))["epoch"] == 3


SAVER = """
import sys, torch
from flgc.engine import checkpoint
payload = {{"config": {{}}, "model": {{"w": torch.randn(2_000_000)}}, "epoch": 0}}
for i in range(10**6):
    payload["epoch"] = i
    checkpoint.save({path!r}, payload)
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_during_save_never_leaves_a_corrupt_file(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.35, 0.5, 0.65, 0.8, 0.95):
        child = subprocess.Popen([sys.executable, "-c", SAVER.format(root=ROOT, path=str(path))],
                                 stdout=subprocess.PIPE, text=True)
        completed = int(child.stdout.readline().split()[0])  # one save has completed
        time.sleep(delay)
        child.kill()
        child.wait()
        saved = checkpoint.load(str(path))  # a whole save, the last completed one or a later one
        assert saved["epoch"] >= completed and saved["model"]["w"].numel() == 2_000_000


def update_deviation(start, one, other):
    """90th percentile over tensors of max|update difference| / max|update|, for the tensors whose
    update is not negligible (BN biases feeding another BN get ~0 gradient: pure rounding)."""
    ratios, largest = [], max(float((one[k] - start[k]).abs().max()) for k in one if one[k].is_floating_point())
    for key in one:
        if not one[key].is_floating_point():
            continue
        step = (one[key] - start[key]).abs().max()
        if step > 1e-3 * largest:
            ratios.append(float((one[key] - other[key]).abs().max() / step))
    return float(torch.tensor(ratios).quantile(0.9))


def torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    """One step with a global batch of 16: torchrun with 2 gloo processes (8 images each, BatchNorm
    statistics synchronised) must make the update one process makes, as closely as one process
    agrees with itself under another thread count and memory layout (float summation order)."""
    write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    common = ["--config", "configs/mbv2_flgc8.yaml", f"data.root={tmp_path / 'data'}",
              "data.verify_checksums=false", "train.batch_size=16", "train.progress=false", "train.epochs=1",
              "data.train_subset=16", "train.lr=0.01", "train.momentum=0"]
    for name, extra in (("one", ["threads=1"]), ("control", ["threads=2", "train.channels_last=false"])):
        result = run_cli("train.py", *common, *extra, f"out_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
    double = torchrun(*common, "threads=1", f"out_dir={tmp_path / 'two'}")
    assert double.returncode == 0, double.stderr[-3000:]
    cfg = config.load("configs/mbv2_flgc8.yaml")
    torch.manual_seed(cfg.seed)
    from flgc.models import build_model
    start = build_model(cfg).state_dict()
    one, two, control = (parameters(tmp_path / n / "last.pt") for n in ("one", "two", "control"))
    assert one.keys() == two.keys()
    assert torch.equal(one["features.0.1.num_batches_tracked"], two["features.0.1.num_batches_tracked"])
    noise = update_deviation(start, one, control)
    assert update_deviation(start, one, two) <= 2 * noise + 0.01


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_train_through_and_resume_past_the_freeze_epoch(tmp_path):
    """freeze() turns the logits' gradients off after DDP was built with them: the wrapper is built
    again, in the run that crosses flgc.freeze_epoch and in one resumed after it."""
    write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    common = ["--config", "configs/mbv2_flgc8.yaml", f"data.root={tmp_path / 'data'}", "data.verify_checksums=false",
              "train.batch_size=16", "train.progress=false", "data.train_subset=32", "threads=1",
              "flgc.freeze_epoch=2", f"out_dir={tmp_path / 'run'}"]
    crossing = torchrun(*common, "train.epochs=2")
    assert crossing.returncode == 0, crossing.stderr[-3000:]
    frozen = checkpoint.load(str(tmp_path / "run" / "last.pt"))["model"]
    resumed = torchrun(*common, "train.epochs=3", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = checkpoint.load(str(tmp_path / "run" / "last.pt"))
    assert final["epoch"] == 3
    logits = [k for k in frozen if k.endswith("group_logits")]
    assert logits and all(torch.equal(frozen[k], final["model"][k]) for k in logits)
    assert not torch.equal(frozen["classifier.weight"], final["model"]["classifier.weight"])


def rank_process(rank, marker):
    """The pid of torchrun's worker of `rank` whose command line holds `marker` (Linux /proc), or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"train.py" in command and marker.encode() in command:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not os.path.isdir("/proc"), reason="needs torch.distributed, /proc")
def test_a_signal_to_one_process_stops_every_process_with_its_exit_code(tmp_path):
    write_tiny_cifar(str(tmp_path / "data"), per_batch=16, test=16)
    out_dir = f"out_dir={tmp_path / 'run'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "train.py", "--config", "configs/mbv2_flgc8.yaml", f"data.root={tmp_path / 'data'}",
                              "data.verify_checksums=false", "train.batch_size=16", "train.progress=false",
                              "train.epochs=1000", "threads=1", "train.checkpoint_steps=1", out_dir],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    saved, deadline = tmp_path / "run" / "last.pt", time.time() + 240
    while not saved.exists() and time.time() < deadline:  # saved after every step
        time.sleep(0.05)
    os.kill(rank_process(1, out_dir), signal.SIGTERM)  # rank 0, which writes the checkpoint, gets no signal
    out, _ = child.communicate(timeout=240)
    assert "stopped by SIGTERM" in out and "ValueError" not in out, out[-3000:]
    # torchrun's report of each process: 143 (stopped by the signal it received or agreed on), or -15 where
    # torchrun itself sent SIGTERM to a process that had saved and was still exiting when the first one had
    # gone; never an abort (-6) from distributed objects freed during interpreter exit
    codes = re.findall(r"exitcode  : (-?\d+)", out)
    assert len(codes) == 2 and "143" in codes and set(codes) <= {"143", "-15"}, out[-3000:]
    saved = checkpoint.load(str(tmp_path / "run" / "last.pt"))
    if saved.get("step"):  # stopped inside an epoch (5 steps): its sums count the images of both processes
        assert saved["epoch_sums"]["seen"] == 16 * saved["step"]
