"""The training and evaluation loop shared by train.py and eval.py: read it top to bottom.

fit(cfg, resume) builds a Run (model, optimizer, schedule, data, processes), then for every epoch
sets up the FLGC layers, trains (train_one_epoch, a loop that never waits for the device), checks
the loss flag, evaluates, writes the checkpoint and logs one metrics row.
"""
import contextlib
import functools
import os
import signal
import sys
import time

import torch

from . import checkpoint, distributed, flops, provenance
from . import config as config_lib
from .budget import check_budget_target, project_to_budget, regularizer_penalty
from .builders import build_model
from .data import Batches, load_split
from .errors import UsageError
from .layer import FLGConv2d
from .optim import build_optimizer, build_scheduler
from .regularizer import project_to_fraction, structure_stats
from .runlog import RunLog, scalars


class Diverged(Exception):
    """The loss became NaN or inf; the last good checkpoint stays."""


class Interrupted(Exception):
    """SIGINT / SIGTERM stopped the run after it saved; exit code 128 + the signal number."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


# --- devices, data, precision -----------------------------------------------------------------
def select_device(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def flgc_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FLGConv2d)]


def make_batches(cfg, device, train, shard=(0, 1)):
    images, labels = load_split(cfg.data, train)
    batch_size = cfg.train.batch_size if train else cfg.train.eval_batch_size
    return Batches(images, labels, cfg.data, batch_size, train, cfg.seed, device,
                   cfg.train.channels_last, shard)


def prepare_model(model, cfg, device):
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def resolve_amp(amp, device):
    """The autocast setting `auto` stands for on `device`: bf16 on CUDA GPUs that compute it, else
    none (fp32). On the 2-thread AVX512-BF16 CPU of docs/training-speed.md a bf16 training step
    is no faster than fp32 when each runs in its own process (as training does), so fp32 stays."""
    if amp != "auto":
        return amp
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "none"


def autocast(amp, device):
    """The autocast context of a train.amp setting on `device`."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def resolve_compile(choice, device):
    """train.compile on `device`: auto is none (eager) on CPU and on CUDA. On CPU torch.compile
    measured slower than eager; on CUDA graph capture has not been measured with this code yet, so
    a first GPU run does not depend on it (configs/fast opt in to cudagraphs explicitly)."""
    if choice == "auto":
        return "none"
    if choice == "cudagraphs" and device.type != "cuda":
        raise UsageError("train.compile=cudagraphs needs a CUDA device; on CPU use none, inductor or auto")
    return choice


def compiled(fn, choice):
    """fn under train.compile `choice` (resolved): none, inductor, or inductor with CUDA graphs."""
    if choice == "none":
        return fn
    if choice == "inductor":
        return torch.compile(fn)
    graphed = torch.compile(fn, mode="reduce-overhead")

    def replay(*args):
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        return graphed(*args)
    return replay


def forward_backward(loss_fn, images, labels, optimizer, scaler=None):
    """The objective's outputs after their backward pass (gradients set, optimizer not stepped)."""
    outputs = loss_fn(images, labels)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(outputs[0]) if scaler is not None else outputs[0]).backward()
    return outputs


class GuardedObjective:
    """The step's objective under a train.compile choice, with a way out: when compiling or graph
    capture raises in the first step (forward or backward), one warning line says so, the model's
    buffers (BatchNorm statistics) are put back, and that step and every later one run eagerly, so
    the run continues with the results an eager run gives."""

    def __init__(self, eager, choice, model):
        self.eager, self.choice, self.model = eager, choice, model
        self.fn = compiled(eager, choice)
        self.proven = choice == "none"

    def __call__(self, images, labels):
        return self.fn(images, labels)

    def forward_backward(self, images, labels, optimizer, scaler=None):
        if self.proven:
            return forward_backward(self.fn, images, labels, optimizer, scaler)
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            outputs = forward_backward(self.fn, images, labels, optimizer, scaler)
        except Exception as err:  # noqa: BLE001 - any failure of the compiler or of capture
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            print(f"warning: train.compile={self.choice} failed in the first step ({type(err).__name__}: {reason}); "
                  f"continuing eager", file=sys.stderr, flush=True)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            self.fn, self.choice = self.eager, "none"
            outputs = forward_backward(self.fn, images, labels, optimizer, scaler)
        self.proven = True
        return outputs


# --- one epoch ----------------------------------------------------------------------------------
class EpochSums:
    """Running sums of an epoch on the device (loss x images, regularizer x images, correct
    predictions), the count of images on the host (batches have one shape), and a device flag that
    turns false when a loss is not finite. Reading them is the only wait for the device."""

    KEYS = ("loss", "regularizer", "correct")

    def __init__(self, device, saved=None):
        saved = saved or {}
        self.values = torch.tensor([float(saved.get(k, 0)) for k in self.KEYS], dtype=torch.float64, device=device)
        self.seen = int(saved.get("seen", 0))
        self.finite = torch.ones((), dtype=torch.bool, device=device)

    def add(self, total, loss, penalty, correct, count):
        self.finite &= torch.isfinite(total)
        parts = torch.stack([loss.detach().double() * count, penalty.detach().double() * count, correct.double()])
        self.values += parts
        self.seen += count

    def to_dict(self):
        return {**dict(zip(self.KEYS, self.values.tolist())), "seen": self.seen}

    def stats(self):
        """Means over every process of a distributed run."""
        totals = torch.cat([self.values, self.values.new_tensor([self.seen])])
        loss, regularizer, correct, seen = distributed.sum_over_processes(totals).tolist()
        seen = max(seen, 1)
        return {"train_loss": loss / seen, "regularizer": regularizer / seen, "train_accuracy": 100.0 * correct / seen}


def weighted_penalty(model, reg):
    """penalty() -> weight x the regularizer `reg` (flgc.regularizer config) of `model`'s trainable FLGC
    layers; None when it is 0 (no weight, or no FLGC layer still learning)."""
    if not reg.weight or all(layer.frozen for _, layer in flgc_layers(model)):
        return None

    def penalty():
        return reg.weight * regularizer_penalty(model, reg.kind, reg.target_mflops, reg.target_fraction)
    penalty()  # eager once: the whole-model budget measures its MAC weights on first use, outside any graph
    return penalty


def objective(network, criterion, penalty=None, amp=None):
    """f(images, labels) -> (total loss, criterion loss, penalty, correct predictions): the part of
    a step that train.compile compiles or captures. penalty() is the weighted regularizer."""
    precision = amp if amp is not None else contextlib.nullcontext

    def forward(images, labels):
        with precision():
            logits = network(images)
            loss = criterion(logits, labels)
        extra = penalty() if penalty is not None else torch.zeros((), device=loss.device)
        return loss.float() + extra, loss, extra, (logits.argmax(1) == labels).sum()
    return forward


def train_one_epoch(loss_fn, optimizer, batches, sums, scheduler=None, scaler=None, stop=None, steps=None):
    """Train on `batches` from batches.start_step on, for at most `steps` steps (default: the rest
    of the epoch) or until stop() turns true; adds to `sums`. Nothing here waits for the device.
    Returns the steps of the epoch done so far."""
    done = batches.start_step
    end = len(batches) if steps is None else min(len(batches), done + steps)
    step = getattr(loss_fn, "forward_backward", None) or functools.partial(forward_backward, loss_fn)
    for images, labels in batches:
        total, loss, penalty, correct = step(images, labels, optimizer, scaler)
        if scaler is not None:  # fp16: loss scaling
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        sums.add(total, loss, penalty, correct, labels.shape[0])
        done += 1
        if done >= end or (stop is not None and stop()):
            break
    return done


@torch.no_grad()
def evaluate(model, batches):
    """{"accuracy": top-1 %, "loss": mean cross-entropy, "images": count} over `batches`."""
    model.eval()
    sums, seen = None, 0
    for images, labels in batches:
        logits = model(images).float()
        batch = torch.stack([torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
                             (logits.argmax(1) == labels).sum().double()])
        sums = batch if sums is None else sums + batch
        seen += labels.numel()
    loss_sum, correct = sums.tolist() if sums is not None else (0.0, 0.0)
    return {"accuracy": 100.0 * correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "images": seen}


# --- FLGC structure across epochs ---------------------------------------------------------------
def assignments(model):
    """{layer name: (input group per channel, group per filter)} of every FLGC layer."""
    return {name: (m.input_groups().cpu(), m.output_groups().cpu()) for name, m in flgc_layers(model)}


def reassignments(before, after):
    """{layer name: [input channels that changed group, filters that changed group]}."""
    return {name: [int((before[name][0] != after[name][0]).sum()),
                   int((before[name][1] != after[name][1]).sum())] for name in after}


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


# keys a resumed run may set differently from its checkpoint: where things are, how fast and how
# verbosely they run, and train.epochs (to extend a run); any other difference changes the result
RESUME_MAY_CHANGE = ("out_dir", "device", "threads", "train.epochs", "train.progress", "train.compile",
                     "train.checkpoint_steps", "train.finite_check_steps", "train.eval_interval",
                     "train.eval_batch_size", "data.root", "data.download", "data.verify_checksums",
                     "flgc.plot_interval", "flgc.log_per_layer")


def check_resumable(saved, cfg, path):
    """UsageError naming the first key whose value in `cfg` differs from the checkpoint's config."""
    for key in config_lib.valid_keys():
        value, old = config_lib.get(cfg, key), config_lib.get(saved, key)
        if key not in RESUME_MAY_CHANGE and old != value:
            raise UsageError(f"cannot resume {path} with {key}={value!r}: it was trained with {old!r}; "
                             f"a resume may change only {', '.join(RESUME_MAY_CHANGE)} "
                             f"(start a new run with another out_dir=DIR instead)")


def _resume_path(cfg, resume):
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(cfg.out_dir, "last.pt")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise UsageError(f"--resume {resume}: no such checkpoint (use --resume auto or a path to last.pt)")
    return resume


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
        if state is not None:
            checkpoint.load_weights(self.model, state["model"], resume_from)
        self.model = prepare_model(self.model, cfg, self.device)
        self.budget_moves = self.project_to_budget() if state is None else self.project_to_budget(moves=False)
        self.train_batches = make_batches(cfg, self.device, train=True, shard=(self.rank, self.world))
        self.test_batches = make_batches(cfg, self.device, train=False)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.optimizer = build_optimizer(self.model, cfg.train, cfg.flgc)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, len(self.train_batches))
        self.scaler = torch.amp.GradScaler(self.device.type) if resolve_amp(cfg.train.amp, self.device) == "fp16" else None
        self.start_epoch, self.start_step, self.best_accuracy = 1, 0, 0.0
        self.epoch_sums, self.epoch_start_assignments = None, None
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
            self.scheduler.load_state_dict(_scheduler_state(state, len(self.train_batches)))
            self.start_epoch, self.best_accuracy = state["epoch"] + 1, state["best_accuracy"]
        except (KeyError, ValueError, TypeError) as err:
            raise UsageError(f"checkpoint {self.resume_from} cannot resume this config ({err})") from None
        torch.set_rng_state(state["rng"])
        self.start_step = state.get("step", 0)
        if self.start_step:
            self.epoch_sums = EpochSums(self.device, state["epoch_sums"])
            self.epoch_start_assignments = state["epoch_start_assignments"]

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
        if step:
            payload.update(step=step, epoch_sums=sums.to_dict(), epoch_start_assignments=before)
        if metrics is not None:
            payload["metrics"] = metrics
        return payload

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
        every process so that all of them stop or go on together."""
        finite = sums.finite if sums is not None else torch.ones((), dtype=torch.bool, device=self.device)
        if self.world == 1:
            return bool(finite), self.stop()
        flags = torch.stack([(~finite).float(), finite.new_tensor(float(self.stop()), dtype=torch.float32)])
        bad, stop = distributed.sum_over_processes(flags).tolist()
        return bad == 0, stop > 0


def _scheduler_state(state, steps_per_epoch):
    """The schedule's state; checkpoints of the per-epoch MultiStepLR count epochs, not steps."""
    saved = dict(state["scheduler"])
    if "lr_lambdas" not in saved:
        steps = state["epoch"] * steps_per_epoch + state.get("step", 0)
        saved = {"last_epoch": steps, "_step_count": steps + 1, "lr_lambdas": [None] * len(state["optimizer"]["param_groups"]),
                 "base_lrs": [g["initial_lr"] for g in state["optimizer"]["param_groups"]],
                 "_last_lr": [g["lr"] for g in state["optimizer"]["param_groups"]]}
    return saved


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
        done = train_one_epoch(loss_fn, run.optimizer, batches, sums, run.scheduler, run.scaler,
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


def epoch_row(run, epoch, sums, before, started):
    """Evaluate (when due) and assemble the metrics row of a finished epoch."""
    cfg, model = run.cfg, run.model
    per_layer = reassignments(before, assignments(model))
    mflops, params = flops.count(model)
    evaluated = run.main and (epoch % cfg.train.eval_interval == 0 or epoch == cfg.train.epochs)
    test = evaluate(model, run.test_batches) if evaluated else {"accuracy": None, "loss": None}
    improved = evaluated and test["accuracy"] > run.best_accuracy
    if improved:
        run.best_accuracy = test["accuracy"]
    return improved, {
        "epoch": epoch, **sums.stats(), "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "best_accuracy": run.best_accuracy, "lr": run.epoch_lr, "mflops": mflops, "params": params,
        **structure_stats(model),
        "reassign_inputs": sum(v[0] for v in per_layer.values()),
        "reassign_filters": sum(v[1] for v in per_layer.values()), "reassign_per_layer": per_layer,
        "epoch_time_s": round(time.time() - started, 2), "amp": resolve_amp(cfg.train.amp, run.device),
        "compile": run.compile, **run.provenance}


def run_epoch(run, epoch, log):
    """One epoch: train, evaluate, save, log. Returns the metrics row, or None when stopped."""
    started = time.time()
    prepare_flgc(run.model, run.cfg, epoch)
    resumed_inside = epoch == run.start_epoch and run.start_step
    before = run.epoch_start_assignments if resumed_inside else assignments(run.model)
    run.epoch_lr = run.optimizer.param_groups[0]["lr"]
    run.model.train()
    sums = train_epoch(run, epoch, before)
    if sums is None:
        return None
    moves, run.budget_moves = run.budget_moves + run.project_to_budget(), 0  # before counting and saving
    improved, row = epoch_row(run, epoch, sums, before, started)
    row["budget_moves"] = moves
    run.save(run.payload(epoch, metrics=scalars(row)), best=improved)
    if log is not None:
        log.write(row, run.model)
    distributed.barrier()
    return row


def fit(cfg, resume=None):
    """Train `cfg` to the end, writing the run directory; returns the last metrics row. A signal
    stops it after saving (Interrupted); a finished run given --resume auto is left as it is."""
    resume_from = _resume_path(cfg, resume)
    last = os.path.join(cfg.out_dir, "last.pt")
    if resume_from is None and os.path.isfile(last):
        raise UsageError(f"{cfg.out_dir} already holds a run (last.pt); continue it with --resume auto "
                         f"or pick another out_dir=DIR")
    state = checkpoint.load(resume_from) if resume_from else None
    if state is not None:  # refuse another architecture or recipe before anything else
        checkpoint.load_weights(build_model(cfg), state["model"], resume_from)
        check_resumable(checkpoint.config_of(state), cfg, resume_from)
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
    log = RunLog(cfg.out_dir, cfg.train.epochs, cfg.flgc.log_per_layer, cfg.flgc.plot_interval) if run.main else None
    return _loop(run, log)


def _loop(run, log):
    run.stop.install()
    row = None
    try:
        for epoch in range(run.start_epoch, run.cfg.train.epochs + 1):
            row = None if run.pause_flags()[1] else run_epoch(run, epoch, log)
            if row is None:
                _stopped(run, epoch)
    finally:
        run.stop.uninstall()
        if log is not None:
            log.close()
        distributed.shutdown()
    return row


def _stopped(run, epoch):
    """Say where the run stopped (as the resume message will count it) and raise Interrupted."""
    name = signal.Signals(run.stop.signal).name
    if run.main and run.saved_at is None:
        print(f"stopped by {name} before the first epoch ended; nothing was saved", flush=True)
    elif run.main:
        print(f"stopped by {name} {position(*run.saved_at, len(run.train_batches))}; saved {run.last_path}. "
              f"Resume with: python train.py --config <the same config and overrides> --resume auto", flush=True)
    raise Interrupted(run.stop.signal)
