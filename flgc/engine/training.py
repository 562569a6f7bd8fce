"""A training run, read top to bottom: fit(cfg, resume) builds a Run (model, optimizer, schedule,
data, processes), then for every epoch sets up the FLGC layers, trains the epoch in stretches of
steps (flgc.engine.step.train_steps), checks the loss flag, evaluates (flgc.engine.evaluation), writes the
checkpoint and logs one metrics row. Signals stop it after a save; --resume continues it.

A resume may change train.epochs (to extend a run); each change is recorded as {from, to, epoch, step}
(the old and new train.epochs, and where the run stood) in the checkpoint (`epochs_changes`, carried by
every later save; a checkpoint without it has none) and in every metrics row written after it, so that
a release can tell the run from one trained with its final schedule from the start.
"""
import gc
import os
import shlex
import signal
import sys
import time

import torch

from ..errors import UsageError
from ..method import flops
from ..method.budget import check_budget_target, project_to_budget
from ..method.layer import flgc_layers
from ..method.regularizer import project_to_fraction, structure_stats
from ..models import build_model
from . import checkpoint, distributed, provenance
from . import config as config_lib
from .data import make_batches
from .evaluation import evaluate
from .optim import build_optimizer, build_scheduler
from .runlog import RunLog, restore_lost_row
from .step import (
    EpochSums,
    GuardedObjective,
    autocast,
    objective,
    prepare_model,
    resolve_amp,
    resolve_compile,
    select_device,
    train_steps,
    warn_emulated_bf16,
    weighted_penalty,
)


class Diverged(Exception):
    """The loss became NaN or inf; the last good checkpoint stays."""


class Interrupted(Exception):
    """SIGINT / SIGTERM stopped the run after it saved; exit code 128 + the signal number."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


# --- FLGC structure across epochs ---------------------------------------------------------------
def assignments(model):
    """{layer name: (input group per channel, group per filter)} of every FLGC layer."""
    return {name: (m.input_groups().cpu(), m.output_groups().cpu()) for name, m in flgc_layers(model)}


def reassignments(before, after):
    """{layer name: [input channels that changed group, filters that changed group]}."""
    return {name: [int((before[name][0] != after[name][0]).sum()),
                   int((before[name][1] != after[name][1]).sum())] for name in after}


def moved_from_start(model, cfg):
    """{layer: {inputs, filters, moved_inputs, moved_filters, input_sizes, filter_sizes}} of the FLGC
    layers of `model` against the seeded initial model of `cfg`, as Run builds it (before a budget
    regularizer's projection at the start, whose few moves count as moved, as in metrics.jsonl);
    {} for a model without FLGC layers. The caller's RNG state is kept (models are built on the CPU)."""
    learned = assignments(model)
    if not learned:
        return {}
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        start = assignments(build_model(cfg))
    moved, table = reassignments(start, learned), {}
    for name, layer in flgc_layers(model):
        inputs, filters = learned[name]
        table[name] = {"inputs": inputs.numel(), "filters": filters.numel(),
                       "moved_inputs": moved[name][0], "moved_filters": moved[name][1],
                       "input_sizes": torch.bincount(inputs, minlength=layer.groups).tolist(),
                       "filter_sizes": torch.bincount(filters, minlength=layer.groups).tolist()}
    return table


def moved_totals(table):
    """{inputs, moved_inputs, filters, moved_filters} summed over the layers of a moved_from_start table."""
    return {key: sum(t[key] for t in table.values()) for key in ("inputs", "moved_inputs", "filters", "moved_filters")}


def temperature(cfg, epoch):
    """Geometric schedule from flgc.temperature_start (epoch 1) to flgc.temperature_end (last epoch)."""
    f = cfg.flgc
    progress = (epoch - 1) / max(cfg.train.epochs - 1, 1)
    return f.temperature_start * (f.temperature_end / f.temperature_start) ** progress


def prepare_flgc(model, cfg, epoch):
    """Set this epoch's softmax temperature; from flgc.freeze_epoch on, fix every assignment."""
    frozen = cfg.flgc.freeze_epoch is not None and epoch >= cfg.flgc.freeze_epoch
    for _, layer in flgc_layers(model):
        layer.temperature = temperature(cfg, epoch)
        if frozen:
            layer.freeze(grouped=cfg.flgc.frozen_compute == "grouped")


# --- stopping and resuming ----------------------------------------------------------------------
class StopRequest:
    """SIGINT / SIGTERM: remember the signal; training finishes its step, saves and exits."""

    def __init__(self):
        self.signal = None

    def __call__(self):
        return self.signal is not None

    def install(self):
        def handler(signum, frame):
            self.signal = signum
        self.previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def uninstall(self):
        for sig, previous in getattr(self, "previous", {}).items():
            signal.signal(sig, previous)

    def agree(self, signum):
        """Adopt `signum`, the signal another process of the run received, when this one received none."""
        if self.signal is None and signum:
            self.signal = int(signum)


def check_resumable(saved, cfg, path):
    """UsageError naming the first key whose value in `cfg` differs from the checkpoint's config."""
    difference = config_lib.first_difference(cfg, saved, config_lib.RESUME_MAY_CHANGE)
    if difference is not None:
        key, value, old = difference
        raise UsageError(f"cannot resume {path} with {key}={value!r}: it was trained with {old!r}; "
                         f"a resume may change only {', '.join(config_lib.RESUME_MAY_CHANGE)} "
                         f"(start a new run with another out_dir=DIR instead)")


def _resume_path(cfg, resume):
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise UsageError(f"out_dir={cfg.out_dir} is a file; the run directory must be a directory (new or a run's)")
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(cfg.out_dir, "last.pt")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise UsageError(f"--resume {resume}: no such checkpoint (use --resume auto or a path to last.pt)")
    return resume


def resume_command(argv=None, world=1):
    """The command that continues this run: the command line it was started with (`argv`, default
    sys.argv) with `--resume auto` in place of any --resume; under torchrun, torchrun with the same
    number of processes. None when the argv is not train.py's (e.g. fit() called from Python)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or os.path.basename(argv[0]) != "train.py":
        return None
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    launcher = ["python"]
    if world > 1:
        nodes = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        launcher = ["torchrun", "--standalone", f"--nproc_per_node={world}"] if nodes == world else \
            ["torchrun", f"--nnodes={world // max(nodes, 1)}", f"--nproc_per_node={nodes}", "<your rendezvous options>"]
    return shlex.join(launcher + [argv[0], *kept, "--resume", "auto"])


def epochs_change(state, cfg):
    """{from, to, epoch, step} when `cfg` resumes the checkpoint dict `state` with another train.epochs, else None."""
    old = checkpoint.config_of(state).train.epochs
    if old == cfg.train.epochs:
        return None
    return {"from": old, "to": cfg.train.epochs, "epoch": state["epoch"], "step": state.get("step", 0)}


def position(epoch, step, steps):
    """Where a run stands, counted as the stop and the resume messages both count: 'after epoch 3'
    or 'in epoch 4 after step 20 of 390'."""
    return f"in epoch {epoch} after step {step} of {steps}" if step else f"after epoch {epoch - 1}"


# --- a run --------------------------------------------------------------------------------------
class Run:
    """Everything one training run holds; fit() drives it epoch by epoch."""

    def __init__(self, cfg, state, resume_from):
        self.cfg, self.resume_from = cfg, resume_from
        self.rank, self.world, _ = distributed.world()
        if cfg.train.batch_size % self.world:
            raise UsageError(f"train.batch_size={cfg.train.batch_size} must be divisible by the {self.world} processes")
        self.device = distributed.init(select_device(cfg))
        self.main = self.rank == 0
        self.compile = resolve_compile(cfg.train.compile, self.device)
        torch.manual_seed(cfg.seed)
        self.model = distributed.convert_batchnorm(build_model(cfg), self.device)
        self.start_assignments = assignments(self.model)  # the seeded structure, also when resuming
        if state is not None:
            checkpoint.load_weights(self.model, state["model"], resume_from)
        self.model = prepare_model(self.model, cfg, self.device)
        self.budget_moves = self.project_to_budget() if state is None else self.project_to_budget(moves=False)
        self.train_batches = make_batches(cfg, self.device, train=True, shard=(self.rank, self.world))
        self.test_batches = make_batches(cfg, self.device, train=False, validation=bool(cfg.data.validation_images))
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.optimizer = build_optimizer(self.model, cfg.train, cfg.flgc)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, len(self.train_batches))
        self.scaler = torch.amp.GradScaler(self.device.type) if resolve_amp(cfg.train.amp, self.device) == "fp16" else None
        if self.main:
            warn_emulated_bf16(cfg.train.amp, self.device)
        self.start_epoch, self.start_step, self.best_accuracy = 1, 0, None  # None: nothing evaluated yet
        self.epoch_sums, self.epoch_start_assignments = None, None
        self.earlier_provenance = []  # of the earlier runs (before a resume) that trained steps of this epoch
        self.epoch_elapsed, self.epoch_clock = 0.0, time.time()
        self.epochs_changes = []  # the train.epochs changes of this run's resumes (module docstring)
        if state is not None:
            self._restore(state)
        self.saved_at = (self.start_epoch, self.start_step) if state is not None else None
        self.last_path = os.path.join(cfg.out_dir, "last.pt")
        self.stop, self.trainable, self.loss_fn = StopRequest(), None, None
        self.provenance = {"hardware": provenance.hardware(self.device, cfg.threads),
                           "commit": provenance.source_commit()}

    def _restore(self, state):
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            # older checkpoints wrote 0.0 for "nothing evaluated yet"
            self.start_epoch, self.best_accuracy = state["epoch"] + 1, state["best_accuracy"] or None
        except (KeyError, ValueError, TypeError) as err:
            raise UsageError(f"checkpoint {self.resume_from} cannot resume this config ({err})") from None
        torch.set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # fp16: the loss scale and its growth count go on
        self.start_step = state.get("step", 0)
        self.epochs_changes = [dict(c) for c in state.get("epochs_changes") or []]
        change = epochs_change(state, self.cfg)
        if change is not None:
            self.epochs_changes.append(change)
        if self.start_step:
            # the saved sums are totals over every process of the run: they count once, on the main process
            self.epoch_sums = EpochSums(self.device, state["epoch_sums"] if self.main else None)
            self.epoch_start_assignments = state["epoch_start_assignments"]
            self.epoch_elapsed = state.get("epoch_elapsed_s", 0.0)
            self.budget_moves = state.get("budget_moves", 0)  # the starting projection's, for epoch 1's row
            self.earlier_provenance = [dict(p) for p in state.get("epoch_provenance") or []]

    def project_to_budget(self, moves=True):
        """With kind=budget: refuse a whole-model target the model cannot meet (UsageError) and, with
        `moves`, move channels and filters until the hard structure is under the whole-model target or
        every layer under its target fraction; returns the moves made."""
        reg = self.cfg.flgc.regularizer
        if reg.kind != "budget" or not moves and reg.target_mflops is None:
            return 0
        if reg.target_mflops is None:
            return project_to_fraction(self.model, reg.target_fraction)
        check_budget_target(self.model, reg.target_mflops)
        return project_to_budget(self.model, reg.target_mflops) if moves else 0

    def loss_function(self):
        """The step's objective over the network as it trains now. DDP and the compiled graph are
        built again when the set of trainable parameters changes (flgc.freeze_epoch turns the
        logits' gradients off; DDP would wait for them forever)."""
        trainable = distributed.trainable(self.model)
        if trainable != self.trainable:
            self.loss_fn = None  # drop the old DDP wrapper (and its gradient hooks) first
            penalty = weighted_penalty(self.model, self.cfg.flgc.regularizer)
            amp = resolve_amp(self.cfg.train.amp, self.device)
            precision = None if amp == "none" else (lambda: autocast(amp, self.device))
            network = distributed.wrap(self.model)
            self.loss_fn = GuardedObjective(objective(network, self.criterion, penalty, precision), self.compile,
                                            self.model)
            self.trainable = trainable
        return self.loss_fn

    def payload(self, epoch, step=0, sums=None, before=None, metrics=None):
        """Checkpoint of the run after `epoch` complete epochs (and `step` steps of the next)."""
        payload = {"config": config_lib.to_dict(self.cfg), "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "epoch": epoch, "best_accuracy": self.best_accuracy, "rng": torch.get_rng_state()}
        if self.epochs_changes:
            payload["epochs_changes"] = [dict(c) for c in self.epochs_changes]
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        if step:  # every process calls this: the sums are totalled over the processes
            payload.update(step=step, epoch_sums=sums.totals(), epoch_start_assignments=before,
                           epoch_elapsed_s=round(time.time() - self.epoch_clock, 2), budget_moves=self.budget_moves,
                           epoch_provenance=self.epoch_provenance())
        if metrics is not None:
            payload["metrics"] = metrics
        return payload

    def epoch_provenance(self):
        """Hardware and commit of every run (start and resumes) that trained steps of the current epoch, each
        once, in the order they first trained it (the main process's: one per run)."""
        distinct = []
        for entry in self.earlier_provenance + [self.provenance]:
            if entry not in distinct:
                distinct.append(entry)
        return distinct

    def save(self, payload, best=False):
        """last.pt (and best.pt), and config.yaml beside them: it always describes the checkpoint."""
        if not self.main:
            return
        checkpoint.save(self.last_path, payload)
        self.saved_at = (payload["epoch"] + 1, payload.get("step", 0))
        if best:
            checkpoint.save(os.path.join(self.cfg.out_dir, "best.pt"), payload)
        with open(os.path.join(self.cfg.out_dir, "config.yaml"), "w") as f:
            f.write(config_lib.dump(self.cfg))

    def pause_flags(self, sums=None):
        """(every loss finite so far, a signal asked to stop): one read of the device, agreed by
        every process so that all of them stop or go on together. The signal's number travels too: a
        process that did not receive it itself stops with the exit code of the one that did."""
        finite = sums.finite if sums is not None else torch.ones((), dtype=torch.bool, device=self.device)
        if self.world == 1:
            return bool(finite), self.stop()
        flags = torch.stack([(~finite).float(), finite.new_tensor(float(self.stop.signal or 0), dtype=torch.float32)])
        bad, signum = distributed.max_over_processes(flags).tolist()
        self.stop.agree(int(signum))
        return bad == 0, self.stop()


def train_epoch(run, epoch, before):
    """Train `epoch` in stretches that end every train.finite_check_steps and train.checkpoint_steps
    steps; after each, read the loss flag and save when due or stopping. Returns the epoch's sums,
    or None when a signal stopped the run (state saved)."""
    batches, checks, saves = run.train_batches, run.cfg.train.finite_check_steps, run.cfg.train.checkpoint_steps
    done = run.start_step if epoch == run.start_epoch else 0
    sums = run.epoch_sums if done else EpochSums(run.device)
    loss_fn = run.loss_function()
    progress = _progress(run.cfg, len(batches), epoch, done) if run.main else None
    stopping = False
    while done < len(batches) and not stopping:
        batches.set_epoch(epoch, done)
        pause = min((done // checks + 1) * checks, (done // saves + 1) * saves if saves else len(batches))
        first = done + 1
        done = train_steps(loss_fn, run.optimizer, batches, sums, run.scheduler, run.scaler,
                               run.stop if run.world == 1 else None, pause - done)
        finite, stopping = run.pause_flags(sums)
        if not finite:
            raise Diverged(f"the loss became NaN or inf in epoch {epoch} between steps {first} and {done} "
                           f"of {len(batches)}; the last good checkpoint is kept")
        if progress is not None:
            progress.update(done - first + 1)
        if done < len(batches) and (stopping or (saves and done % saves == 0)):
            run.save(run.payload(epoch - 1, done, sums, before))
    if progress is not None:
        progress.close()
    run.compile = loss_fn.choice  # none after a fallback: later rebuilds (freeze) and the log say so
    return None if done < len(batches) else sums


def _progress(cfg, total, epoch, done):
    if not cfg.train.progress:
        return None
    from tqdm import tqdm
    bar = tqdm(total=total, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, file=sys.stderr,
               dynamic_ncols=True)
    bar.update(done)
    return bar


def epoch_row(run, epoch, sums, before):
    """Evaluate (when due) and assemble the metrics row of a finished epoch."""
    cfg, model = run.cfg, run.model
    now = assignments(model)
    per_layer, from_start = reassignments(before, now), reassignments(run.start_assignments, now)
    mflops, params = flops.count(model)
    evaluated = run.main and (epoch % cfg.train.eval_interval == 0 or epoch == cfg.train.epochs)
    test = evaluate(model, run.test_batches) if evaluated else {"accuracy": None, "loss": None}
    improved = evaluated and (run.best_accuracy is None or test["accuracy"] > run.best_accuracy)
    if improved:
        run.best_accuracy = test["accuracy"]
    return improved, {
        "epoch": epoch, **sums.stats(), "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "best_accuracy": run.best_accuracy, "lr": run.epoch_lr, "mflops": mflops, "params": params,
        **structure_stats(model),
        "reassign_inputs": sum(v[0] for v in per_layer.values()),
        "reassign_filters": sum(v[1] for v in per_layer.values()), "reassign_per_layer": per_layer,
        "moved_inputs": sum(v[0] for v in from_start.values()),
        "moved_filters": sum(v[1] for v in from_start.values()),
        "eval_split": "validation" if cfg.data.validation_images else "test",
        "epoch_time_s": round(time.time() - run.epoch_clock, 2), "amp": resolve_amp(cfg.train.amp, run.device),
        "compile": run.compile, **run.provenance,
        **({"epoch_provenance": run.epoch_provenance()} if len(run.epoch_provenance()) > 1 else {}),
        **({"epochs_changes": [dict(c) for c in run.epochs_changes]} if run.epochs_changes else {})}


def epoch_start_lr(run, resumed_inside):
    """The lr (first param group) of the epoch's first step, also for an epoch resumed after some of its steps."""
    if not resumed_inside:
        return run.optimizer.param_groups[0]["lr"]
    first_step = run.scheduler.last_epoch - run.start_step  # the scheduler counts every step of the run
    return run.scheduler.base_lrs[0] * run.scheduler.lr_lambdas[0](first_step)


def train_and_checkpoint_epoch(run, epoch, log):
    """One epoch: train, evaluate, save, log. Returns the metrics row, or None when stopped."""
    prepare_flgc(run.model, run.cfg, epoch)
    resumed_inside = epoch == run.start_epoch and run.start_step
    # an epoch's time includes what it ran before a stop (saved with its mid-epoch checkpoint)
    run.epoch_clock = time.time() - (run.epoch_elapsed if resumed_inside else 0.0)
    before = run.epoch_start_assignments if resumed_inside else assignments(run.model)
    run.epoch_lr = epoch_start_lr(run, resumed_inside)
    if not resumed_inside:
        run.earlier_provenance = []
    run.model.train()
    sums = train_epoch(run, epoch, before)
    if sums is None:
        return None
    moves, run.budget_moves = run.budget_moves + run.project_to_budget(), 0  # before counting and saving
    improved, row = epoch_row(run, epoch, sums, before)
    row["budget_moves"] = moves
    run.save(run.payload(epoch, metrics=row), best=improved)  # the whole row: a resume restores a lost one
    if log is not None:
        log.write(row, run.model)
    distributed.barrier()
    return row


def _restore_lost_row(cfg, state, resume_from):
    """A row lost to a kill is written from the run's own last.pt (not from a checkpoint of another run)."""
    own = os.path.abspath(resume_from) == os.path.abspath(os.path.join(cfg.out_dir, "last.pt"))
    if not own or distributed.world()[0] != 0:
        return
    restored = restore_lost_row(cfg.out_dir, state)
    if restored is not None:
        log = RunLog(cfg.out_dir, cfg.train.epochs, cfg.flgc.log_per_layer)
        log.write_scalars(restored)
        log.close()
        print(f"metrics.jsonl lacked the row of epoch {restored['epoch']} (stopped between its checkpoint and its "
              f"row): written from the checkpoint, to TensorBoard too", flush=True)


def fit(cfg, resume=None):
    """Train `cfg` to the end, writing the run directory; returns the last metrics row. A signal
    stops it after saving (Interrupted); a finished run given --resume auto is left as it is."""
    resume_from = _resume_path(cfg, resume)
    last = os.path.join(cfg.out_dir, "last.pt")
    if resume_from is None and os.path.isfile(last):
        raise UsageError(f"{cfg.out_dir} already holds a run (last.pt); continue it with --resume auto "
                         f"or pick another out_dir=DIR")
    state = checkpoint.load(resume_from) if resume_from else None
    if state is not None and "epoch" not in state:
        raise UsageError(f"--resume {resume_from}: it holds weights only (a release or a deployed file), no epoch, "
                         f"optimizer or schedule to continue; resume a run's last.pt")
    if state is not None:  # refuse another architecture or recipe before anything else
        checkpoint.load_weights(build_model(cfg), state["model"], resume_from)
        check_resumable(checkpoint.config_of(state), cfg, resume_from)
        _restore_lost_row(cfg, state, resume_from)
        if state["epoch"] >= cfg.train.epochs and not state.get("step"):
            print(f"{resume_from} is complete: {state['epoch']} of {cfg.train.epochs} epochs trained; nothing to do "
                  f"(train longer with train.epochs=N --resume auto)", flush=True)
            return state.get("metrics")
    run = Run(cfg, state, resume_from)
    if run.main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if resume_from is not None:
            print(f"resumed from {resume_from} {position(run.start_epoch, run.start_step, len(run.train_batches))}",
                  flush=True)
            change = epochs_change(state, cfg)
            if change is not None:
                print(f"train.epochs changed from {change['from']} to {change['to']}: recorded in the checkpoint and "
                      f"the metrics rows (a release refuses a run whose lr or temperature schedule this changed)",
                      flush=True)
    log = RunLog(cfg.out_dir, cfg.train.epochs, cfg.flgc.log_per_layer, cfg.flgc.plot_interval) if run.main else None
    return _loop(run, log)


def _loop(run, log):
    run.stop.install()
    row = None
    try:
        for epoch in range(run.start_epoch, run.cfg.train.epochs + 1):
            row = None if run.pause_flags()[1] else train_and_checkpoint_epoch(run, epoch, log)
            if row is None:
                _stopped(run, epoch)
    finally:
        run.stop.uninstall()
        if log is not None:
            log.close()
        # DDP's reducer holds the process group and its last work; it must go while the interpreter
        # is whole: a gloo thread freed during interpreter exit aborts the process (SIGABRT)
        run.loss_fn = None
        gc.collect()
        distributed.shutdown()
    return row


def _stopped(run, epoch):
    """Say where the run stopped (as the resume message will count it) and raise Interrupted."""
    name = signal.Signals(run.stop.signal).name
    if run.main and run.saved_at is None:
        print(f"stopped by {name} before the first epoch ended; nothing was saved", flush=True)
    elif run.main:
        command = resume_command(world=run.world) or "python train.py --config <the same config and overrides> --resume auto"
        print(f"stopped by {name} {position(*run.saved_at, len(run.train_batches))}; saved {run.last_path}. "
              f"Resume with: {command}", flush=True)
    raise Interrupted(run.stop.signal)
