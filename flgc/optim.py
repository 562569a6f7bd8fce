"""The optimizer and the learning-rate schedule of a training run (the train.* recipe keys).

The schedule is a factor of the peak lr evaluated at every optimizer step s (0-based over the
whole run, `steps_per_epoch` steps an epoch):
- linear warm-up over the first train.warmup_epochs: factor (s + 1) / warm-up steps;
- multistep: train.lr_gamma ** (number of milestones <= completed epochs), the per-epoch reference
  schedule, unchanged when there is no warm-up;
- cosine: 0.5 (1 + cos(pi t)), t the fraction of the steps after warm-up done, down to 0;
- onecycle: the triangular one-cycle: after the warm-up, linear decay to 0 at the last step.
The peak lr is train.lr * train.batch_size / train.base_batch_size (linear scaling), or train.lr
when train.base_batch_size is null.
"""
import math

import torch

from .layer import FLGConv2d


def peak_lr(train_cfg):
    if train_cfg.base_batch_size is None:
        return train_cfg.lr
    return train_cfg.lr * train_cfg.batch_size / train_cfg.base_batch_size


def build_optimizer(model, train_cfg, flgc_cfg):
    """SGD; FLGC assignment logits get their own lr scale (flgc.logit_lr_scale) and weight decay."""
    layers = [m for m in model.modules() if isinstance(m, FLGConv2d)]
    logits = [p for m in layers for p in (m.input_group_logits, m.output_group_logits)]
    logit_ids = {id(p) for p in logits}
    weights = [p for p in model.parameters() if id(p) not in logit_ids]
    lr = peak_lr(train_cfg)
    groups = [{"params": weights, "weight_decay": train_cfg.weight_decay, "lr": lr}]
    if logits:
        groups.append({"params": logits, "weight_decay": flgc_cfg.logit_weight_decay,
                       "lr": lr * flgc_cfg.logit_lr_scale})
    return torch.optim.SGD(groups, lr=lr, momentum=train_cfg.momentum, nesterov=train_cfg.nesterov)


def lr_factor(train_cfg, steps_per_epoch, step):
    """The factor of the peak lr at optimizer step `step` (0-based over the run)."""
    warmup = round(train_cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if train_cfg.schedule == "multistep":
        done = step // steps_per_epoch
        return train_cfg.lr_gamma ** sum(1 for m in train_cfg.milestones if m <= done)
    total = max(train_cfg.epochs * steps_per_epoch - warmup, 1)
    progress = min((step - warmup) / total, 1.0)
    if train_cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress  # onecycle


def build_scheduler(optimizer, train_cfg, steps_per_epoch):
    """A LambdaLR stepped after every optimizer step (its state is the step count, for resume)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(train_cfg, steps_per_epoch, step))
