"""The training and evaluation loop shared by train.py and eval.py: read it top to bottom."""
import contextlib
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint, flops
from . import config as config_lib
from .builders import build_model
from .data import Batches, load_split
from .errors import UsageError
from .layer import FLGConv2d
from .regularizer import group_regularizer, structure_stats


class Diverged(Exception):
    """The loss became NaN or inf; the last good checkpoint stays."""


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


def build_optimizer(model, cfg):
    """SGD; FLGC assignment logits get their own lr scale and weight decay."""
    logits = [p for _, m in flgc_layers(model) for p in (m.input_group_logits, m.output_group_logits)]
    logit_ids = {id(p) for p in logits}
    weights = [p for p in model.parameters() if id(p) not in logit_ids]
    t, f = cfg.train, cfg.flgc
    groups = [{"params": weights, "weight_decay": t.weight_decay, "lr_scale": 1.0}]
    if logits:
        groups.append({"params": logits, "weight_decay": f.logit_weight_decay,
                       "lr_scale": f.logit_lr_scale, "lr": t.lr * f.logit_lr_scale})
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)


def build_scheduler(optimizer, cfg):
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.train.milestones, cfg.train.lr_gamma)


def make_batches(cfg, device, train, shard=(0, 1)):
    images, labels = load_split(cfg.data, train)
    batch_size = cfg.train.batch_size if train else cfg.train.eval_batch_size
    return Batches(images, labels, cfg.data, batch_size, train, cfg.seed, device,
                   cfg.train.channels_last, shard)


def prepare_model(model, cfg, device):
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


@torch.no_grad()
def evaluate(model, batches):
    """{"accuracy": top-1 %, "loss": mean cross-entropy, "images": count} over `batches`."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in batches:
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.numel()
    return {"accuracy": 100.0 * correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "images": seen}


class EpochState:
    """Running sums of an epoch; saved in step checkpoints so a resumed epoch reports exactly."""

    def __init__(self, sums=None):
        self.sums = dict(sums or {"loss": 0.0, "regularizer": 0.0, "correct": 0, "seen": 0})

    def add(self, loss, penalty, correct, seen):
        for key, value in (("loss", loss * seen), ("regularizer", penalty * seen), ("correct", correct), ("seen", seen)):
            self.sums[key] += value

    def totals(self):
        """Sums over every process of a distributed run."""
        sums = dict(self.sums)
        if dist.is_available() and dist.is_initialized():
            values = torch.tensor([float(sums[k]) for k in ("loss", "regularizer", "correct", "seen")],
                                  dtype=torch.float64)
            dist.all_reduce(values)
            sums = dict(zip(("loss", "regularizer", "correct", "seen"), values.tolist()))
        return sums

    def stats(self):
        sums = self.totals()
        seen = max(sums["seen"], 1)
        return {"train_loss": sums["loss"] / seen, "regularizer": sums["regularizer"] / seen,
                "train_accuracy": 100.0 * sums["correct"] / seen}


def train_one_epoch(model, batches, optimizer, cfg, epoch, progress=None, state=None, stop=None,
                    on_step=None, network=None):
    """Train over `batches` (from batches.start_step on). `network` is the module to call (a DDP or
    compiled wrapper of model, or model itself). After each step, on_step(step, state) may save; when
    stop() turns true the epoch ends early. Returns (EpochState, the number of steps done)."""
    network = network or model
    model.train()
    reg = cfg.flgc.regularizer
    state = state or EpochState()
    device = next(model.parameters()).device
    autocast = _autocast(cfg, device)
    # fp16 needs loss scaling (bf16 does not); the scale restarts each epoch
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    step = batches.start_step
    for step, (images, labels) in enumerate(batches, start=batches.start_step):
        with autocast:
            logits = network(images)
            loss = F.cross_entropy(logits, labels)
        penalty = (group_regularizer(model, reg.kind, reg.target_mflops, reg.target_fraction) if reg.weight
                   else torch.zeros(()))
        total = loss.float() + reg.weight * penalty.to(loss.device)
        if not math.isfinite(total.item()):
            raise Diverged(f"loss became {total.item()} at epoch {epoch} step {step}; "
                           f"the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        state.add(loss.item(), penalty.item(), (logits.argmax(1) == labels).sum().item(), labels.numel())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{state.sums['loss'] / state.sums['seen']:.3f}")
        if on_step is not None:
            on_step(step + 1, state)
        if stop is not None and stop():
            return state, step + 1
    return state, len(batches)


def resolve_amp(amp, device):
    """The autocast setting `auto` stands for on `device`: bf16 on CUDA GPUs that compute it, else
    none (fp32). On the 2-thread AVX512-BF16 CPU of the README's measurements a bf16 training step
    is no faster than fp32 when each runs in its own process (as training does), so fp32 stays."""
    if amp != "auto":
        return amp
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "none"


def _autocast(cfg, device):
    amp = resolve_amp(cfg.train.amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


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


def _resume_path(cfg, resume):
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(cfg.out_dir, "last.pt")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise UsageError(f"--resume {resume}: no such checkpoint (use --resume auto or a path to last.pt)")
    return resume


def _progress(cfg, total, epoch):
    if not cfg.train.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _distributed(cfg):
    """(rank, world, device) under torchrun (WORLD_SIZE > 1); (0, 1, None) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.train.batch_size % world:
        raise UsageError(f"train.batch_size={cfg.train.batch_size} must be divisible by the {world} processes")
    return rank, world, device


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


class Run:
    """Everything one training run holds; fit() drives it epoch by epoch."""

    def __init__(self, cfg, resume):
        self.cfg = cfg
        self.rank, self.world, device = _distributed(cfg)
        self.device = device or select_device(cfg)
        self.main = self.rank == 0
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg)
        if self.world > 1:  # batch statistics over the global batch, as in one process
            if self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                from .distributed import sync_batchnorm
                self.model = sync_batchnorm(self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.start_epoch, self.start_step, self.best_accuracy = 1, 0, 0.0
        self.epoch_state, self.epoch_start_assignments = None, None
        self.resume_from = _resume_path(cfg, resume)
        self.last_path = os.path.join(cfg.out_dir, "last.pt")
        if self.resume_from is None and os.path.isfile(self.last_path):
            raise UsageError(f"{cfg.out_dir} already holds a run (last.pt); continue it with --resume auto "
                             f"or pick another out_dir=DIR")
        state = checkpoint.load(self.resume_from) if self.resume_from else None
        if state is not None:
            checkpoint.load_weights(self.model, state["model"], self.resume_from)
        self.model = prepare_model(self.model, cfg, self.device)
        if state is not None:
            self._restore(state)
        shard = (self.rank, self.world)
        self.train_batches = make_batches(cfg, self.device, train=True, shard=shard)
        self.test_batches = make_batches(cfg, self.device, train=False)
        self.network = self.model
        if self.world > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(self.model)
        if cfg.train.compile:
            self.network = torch.compile(self.network)
        self.stop = StopRequest()

    def _restore(self, state):
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_epoch, self.best_accuracy = state["epoch"] + 1, state["best_accuracy"]
        except (KeyError, ValueError, TypeError) as err:
            raise UsageError(f"checkpoint {self.resume_from} cannot resume this config ({err})") from None
        torch.set_rng_state(state["rng"])
        self.start_step = state.get("step", 0)
        if self.start_step:
            self.epoch_state = EpochState(state["epoch_sums"])
            self.epoch_start_assignments = state["epoch_start_assignments"]

    def payload(self, epoch, step=0, epoch_state=None, before=None, metrics=None):
        """Checkpoint of the run after `epoch` complete epochs (and `step` steps of the next)."""
        payload = {"config": config_lib.to_dict(self.cfg), "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "epoch": epoch, "best_accuracy": self.best_accuracy, "rng": torch.get_rng_state()}
        if step:
            payload.update(step=step, epoch_sums=epoch_state.sums, epoch_start_assignments=before)
        if metrics is not None:
            payload["metrics"] = metrics
        return payload

    def save_step(self, epoch, step, epoch_state, before):
        if self.main:
            checkpoint.save(self.last_path, self.payload(epoch - 1, step, epoch_state, before))

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def fit(cfg, resume=None):
    """Train `cfg` to the end (or to a SIGINT / SIGTERM), writing the run directory; returns the
    last metrics row."""
    run = Run(cfg, resume)
    writer = None
    if run.main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "config.yaml"), "w") as f:
            f.write(config_lib.dump(cfg))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(cfg.out_dir)
        if run.resume_from is not None:
            where = f"epoch {run.start_epoch - 1}" + (f", step {run.start_step}" if run.start_step else "")
            print(f"resumed from {run.resume_from} at {where}")
    run.stop.install()
    row = None
    try:
        for epoch in range(run.start_epoch, cfg.train.epochs + 1):
            row = None if run.stop() else _run_epoch(run, epoch, writer)
            if row is None:  # stopped by a signal, state saved
                name = signal.Signals(run.stop.signal).name
                if run.main:
                    print(f"stopped by {name} in epoch {epoch}; saved {run.last_path}. Resume with: "
                          f"python train.py --config <the same config and overrides> --resume auto", flush=True)
                break
    finally:
        run.stop.uninstall()
        if writer is not None:
            writer.close()
        if run.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return row


def _run_epoch(run, epoch, writer):
    cfg, model = run.cfg, run.model
    started = time.time()
    prepare_flgc(model, cfg, epoch)
    start_step = run.start_step if epoch == run.start_epoch else 0
    before = run.epoch_start_assignments if start_step else assignments(model)
    state = run.epoch_state if start_step else None
    lr = run.optimizer.param_groups[0]["lr"]
    run.train_batches.set_epoch(epoch, start_step)
    interval = cfg.train.checkpoint_steps
    on_step = None
    if interval:
        def on_step(step, epoch_state):
            if step % interval == 0 and step < len(run.train_batches):
                run.save_step(epoch, step, epoch_state, before)
    progress = _progress(cfg, len(run.train_batches), epoch) if run.main else None
    if progress is not None:
        progress.update(start_step)
    try:
        state, steps = train_one_epoch(model, run.train_batches, run.optimizer, cfg, epoch, progress, state,
                                       run.stop, on_step, run.network)
    finally:
        if progress is not None:
            progress.close()
    if steps < len(run.train_batches):
        run.save_step(epoch, steps, state, before)
        return None
    run.scheduler.step()
    stats = state.stats()
    per_layer = reassignments(before, assignments(model))
    mflops, params = flops.count(model)
    evaluated = epoch % cfg.train.eval_interval == 0 or epoch == cfg.train.epochs
    test = {"accuracy": None, "loss": None}
    if evaluated and run.main:
        test = evaluate(model, run.test_batches)
    improved = evaluated and run.main and test["accuracy"] > run.best_accuracy
    if improved:
        run.best_accuracy = test["accuracy"]
    row = {"epoch": epoch, **stats, "test_loss": test["loss"], "test_accuracy": test["accuracy"],
           "best_accuracy": run.best_accuracy, "lr": lr, "mflops": mflops, "params": params, **structure_stats(model),
           "reassign_inputs": sum(v[0] for v in per_layer.values()),
           "reassign_filters": sum(v[1] for v in per_layer.values()),
           "reassign_per_layer": per_layer, "epoch_time_s": round(time.time() - started, 2),
           "amp": resolve_amp(run.cfg.train.amp, run.device)}
    if run.main:
        payload = run.payload(epoch, metrics=_scalars(row))
        checkpoint.save(run.last_path, payload)
        if improved:
            checkpoint.save(os.path.join(cfg.out_dir, "best.pt"), payload)
        with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in _scalars(row).items():
            if key != "epoch" and value is not None:
                writer.add_scalar(key, value, epoch)
        if cfg.flgc.log_per_layer:
            for name, (moved_inputs, moved_filters) in per_layer.items():
                writer.add_scalar(f"reassign_per_layer/{name}/inputs", moved_inputs, epoch)
                writer.add_scalar(f"reassign_per_layer/{name}/filters", moved_filters, epoch)
        plots = cfg.flgc.plot_interval
        if plots and flgc_layers(model) and (epoch % plots == 0 or epoch == cfg.train.epochs):
            from .plots import group_figure
            writer.add_figure("groups", group_figure(model), epoch)
        writer.flush()
        print(summary_line(row, cfg.train.epochs), flush=True)
    run.barrier()
    return row


def _scalars(row):
    return {k: v for k, v in row.items() if v is None or isinstance(v, (int, float))}


def summary_line(row, epochs):
    test = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.2f}%"
    line = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  train {row['train_accuracy']:.2f}%  "
            f"test {test}  best {row['best_accuracy']:.2f}%  lr {row['lr']:.4g}  {row['mflops']:.2f} MMac")
    if row["reassign_per_layer"]:
        line += (f"  reg {row['regularizer']:.4f}  reassigned: {row['reassign_inputs']} inputs, "
                 f"{row['reassign_filters']} filters")
    return line + f"  {row['epoch_time_s']:.1f}s"
