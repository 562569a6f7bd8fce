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
import torch.nn as nn

from ..method.layer import FLGConv2d, flgc_layers

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def peak_lr(train_cfg):
    if train_cfg.base_batch_size is None:
        return train_cfg.lr
    return train_cfg.lr * train_cfg.batch_size / train_cfg.base_batch_size


def weight_decay_groups(model, train_cfg):
    """{weight decay: parameters} of the network's weights: train.norm_weight_decay for normalization
    layers and biases, train.depthwise_weight_decay for depthwise conv filters (each null = the same
    as train.weight_decay), train.weight_decay for the rest. FLGC assignment logits are left out."""
    def decay(value):
        return train_cfg.weight_decay if value is None else value
    norm, depthwise = decay(train_cfg.norm_weight_decay), decay(train_cfg.depthwise_weight_decay)
    groups = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, FLGConv2d) and name in ("input_group_logits", "output_group_logits"):
                continue
            if isinstance(module, NORMS) or name == "bias":
                wd = norm
            elif isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
                wd = depthwise
            else:
                wd = train_cfg.weight_decay
            groups.setdefault(wd, []).append(param)
    return groups


def build_optimizer(model, train_cfg, flgc_cfg):
    """SGD; FLGC assignment logits get their own lr scale (flgc.logit_lr_scale) and weight decay."""
    logits = [p for _, m in flgc_layers(model) for p in (m.input_group_logits, m.output_group_logits)]
    lr = peak_lr(train_cfg)
    groups = [{"params": params, "weight_decay": wd, "lr": lr}
              for wd, params in weight_decay_groups(model, train_cfg).items()]
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
