"""The training and evaluation loop shared by train.py and eval.py: read it top to bottom."""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from . import checkpoint, flops
from . import config as config_lib
from .data import Batches, load_split
from .errors import UsageError
from .layer import FLGConv2d
from .registry import build_model
from .regularizer import group_regularizer


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


def train_one_epoch(model, batches, optimizer, cfg, epoch, progress=None):
    """One pass over `batches`; returns mean loss, regularizer and accuracy of the epoch."""
    model.train()
    reg = cfg.flgc.regularizer
    loss_sum = reg_sum = 0.0
    correct = seen = 0
    for step, (images, labels) in enumerate(batches):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        penalty = group_regularizer(model, reg.kind) if reg.weight else torch.zeros(())
        total = loss + reg.weight * penalty.to(loss.device)
        if not math.isfinite(total.item()):
            raise Diverged(f"loss became {total.item()} at epoch {epoch} step {step}; "
                           f"the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        n = labels.numel()
        loss_sum += loss.item() * n
        reg_sum += penalty.item() * n
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum / seen:.3f}")
    return {"train_loss": loss_sum / seen, "regularizer": reg_sum / seen,
            "train_accuracy": 100.0 * correct / seen}


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
            layer.freeze()


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


def fit(cfg, resume=None):
    """Train `cfg` to the end, writing the run directory; returns the last metrics row."""
    device = select_device(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    start_epoch, best_accuracy = 1, 0.0
    resume_from = _resume_path(cfg, resume)
    last_path = os.path.join(cfg.out_dir, "last.pt")
    if resume_from is None and os.path.isfile(last_path):
        raise UsageError(f"{cfg.out_dir} already holds a run (last.pt); continue it with --resume auto "
                         f"or pick another out_dir=DIR")
    state = None
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        checkpoint.load_weights(model, state["model"], resume_from)
    model = prepare_model(model, cfg, device)
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError) as err:
            raise UsageError(f"checkpoint {resume_from} cannot resume this config ({err})") from None
        start_epoch, best_accuracy = state["epoch"] + 1, state["best_accuracy"]
        torch.set_rng_state(state["rng"])
    train_batches = make_batches(cfg, device, train=True)
    test_batches = make_batches(cfg, device, train=False)

    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "config.yaml"), "w") as f:
        f.write(config_lib.dump(cfg))
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(cfg.out_dir)
    if resume_from is not None:
        print(f"resumed from {resume_from} at epoch {start_epoch - 1}")
    row = None
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            row = _run_epoch(model, cfg, epoch, train_batches, test_batches, optimizer, scheduler,
                             best_accuracy, writer)
            best_accuracy = row["best_accuracy"]
    finally:
        writer.close()
    return row


def _run_epoch(model, cfg, epoch, train_batches, test_batches, optimizer, scheduler, best_accuracy, writer):
    started = time.time()
    prepare_flgc(model, cfg, epoch)
    before = assignments(model)
    lr = optimizer.param_groups[0]["lr"]
    train_batches.set_epoch(epoch)
    progress = _progress(cfg, len(train_batches), epoch)
    try:
        stats = train_one_epoch(model, train_batches, optimizer, cfg, epoch, progress)
    finally:
        if progress is not None:
            progress.close()
    scheduler.step()
    per_layer = reassignments(before, assignments(model))
    mflops, params = flops.count(model)
    evaluated = epoch % cfg.train.eval_interval == 0 or epoch == cfg.train.epochs
    test = evaluate(model, test_batches) if evaluated else {"accuracy": None, "loss": None}
    improved = evaluated and test["accuracy"] > best_accuracy
    best_accuracy = test["accuracy"] if improved else best_accuracy
    row = {"epoch": epoch, **stats, "test_loss": test["loss"], "test_accuracy": test["accuracy"],
           "best_accuracy": best_accuracy, "lr": lr, "mflops": mflops, "params": params,
           "reassign_inputs": sum(v[0] for v in per_layer.values()),
           "reassign_filters": sum(v[1] for v in per_layer.values()),
           "reassign_per_layer": per_layer, "epoch_time_s": round(time.time() - started, 2)}
    payload = {"config": config_lib.to_dict(cfg), "model": model.state_dict(),
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "epoch": epoch, "best_accuracy": best_accuracy, "metrics": _scalars(row),
               "rng": torch.get_rng_state()}
    checkpoint.save(os.path.join(cfg.out_dir, "last.pt"), payload)
    if improved:
        checkpoint.save(os.path.join(cfg.out_dir, "best.pt"), payload)
    with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in _scalars(row).items():
        if key != "epoch" and value is not None:
            writer.add_scalar(key, value, epoch)
    interval = cfg.flgc.plot_interval
    if interval and flgc_layers(model) and (epoch % interval == 0 or epoch == cfg.train.epochs):
        from .plots import group_figure
        writer.add_figure("groups", group_figure(model), epoch)
    writer.flush()
    print(summary_line(row, cfg.train.epochs), flush=True)
    return row


def _scalars(row):
    return {k: v for k, v in row.items() if not isinstance(v, dict)}


def summary_line(row, epochs):
    test = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.2f}%"
    line = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  train {row['train_accuracy']:.2f}%  "
            f"test {test}  best {row['best_accuracy']:.2f}%  lr {row['lr']:.4g}  {row['mflops']:.2f} MMac")
    if row["reassign_per_layer"]:
        line += (f"  reg {row['regularizer']:.4f}  reassigned: {row['reassign_inputs']} inputs, "
                 f"{row['reassign_filters']} filters")
    return line + f"  {row['epoch_time_s']:.1f}s"
