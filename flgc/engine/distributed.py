"""Data-parallel plumbing: process group, DistributedDataParallel, synchronised BatchNorm, barriers
and sums over processes. A run without torchrun (WORLD_SIZE unset or 1) is one process and every
function here is then a no-op.

torch.nn.SyncBatchNorm runs on GPUs only; CPUSyncBatchNorm all-reduces per-channel sums over the
processes so that N processes with a global batch B train exactly like one process with batch B (up
to float summation order). Module names and state are those of nn.BatchNorm2d.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

_GROUP = {}


def _group():
    """A process group of its own: BN collectives must not interleave with DDP's gradient buckets."""
    return _GROUP.get("bn")


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        channels = x.shape[1]
        # statistics in float64, as torch's CPU BatchNorm accumulates them
        wide = x.double()
        local = torch.cat([wide.sum((0, 2, 3)), (wide * wide).sum((0, 2, 3)),
                           torch.tensor([x.numel() / channels], dtype=torch.float64)])
        dist.all_reduce(local, group=_group())
        count = local[-1]
        mean = local[:channels] / count
        var = (local[channels:2 * channels] / count - mean * mean).clamp(min=0)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_((momentum * mean).to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_((momentum * var * count / (count - 1)).to(running_var.dtype))
        invstd = torch.rsqrt(var + eps)
        normalised = (x - mean.to(x.dtype)[None, :, None, None]) * invstd.to(x.dtype)[None, :, None, None]
        ctx.save_for_backward(normalised, weight, invstd, count)
        return normalised * weight[None, :, None, None] + bias[None, :, None, None]

    @staticmethod
    def backward(ctx, grad):
        normalised, weight, invstd, count = ctx.saved_tensors
        wide = grad.double()
        grad_bias = wide.sum((0, 2, 3))
        grad_weight = (wide * normalised.double()).sum((0, 2, 3))
        total = torch.cat([grad_bias, grad_weight])
        dist.all_reduce(total, group=_group())
        channels = grad_bias.numel()
        mean_bias, mean_weight = (total[:channels] / count).float(), (total[channels:] / count).float()
        scale = (weight * invstd.float())[None, :, None, None]
        grad_input = scale * (grad - mean_bias[None, :, None, None] - normalised * mean_weight[None, :, None, None])
        return grad_input, grad_weight.to(grad.dtype), grad_bias.to(grad.dtype), None, None, None, None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        return _SyncBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                    self.eps, self.momentum)


def sync_batchnorm(model):
    """Replace every nn.BatchNorm2d of model by CPUSyncBatchNorm (same parameters and buffers).
    Call on every process (it creates the process group the statistics travel in)."""
    if "bn" not in _GROUP:
        _GROUP["bn"] = dist.new_group(backend="gloo")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                synced = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum).to(child.weight.device)
                synced.load_state_dict(child.state_dict())
                setattr(module, child_name, synced)
    return model


def world():
    """(rank, number of processes, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def active():
    return dist.is_available() and dist.is_initialized()


def init(device):
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this process's device."""
    _, size, local = world()
    if size == 1:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def convert_batchnorm(model, device):
    """BatchNorm statistics over the global batch: torch's SyncBatchNorm on CUDA, ours on CPU."""
    if not active():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return sync_batchnorm(model)


def wrap(model):
    """model in DistributedDataParallel over the parameters that train now (model itself alone).
    Build it again whenever the set of trainable parameters changes: DDP expects a gradient for
    every parameter it was built with."""
    return torch.nn.parallel.DistributedDataParallel(model) if active() else model


def trainable(model):
    """Which parameters train, as a hashable signature for wrap()'s rebuild rule."""
    return tuple(p.requires_grad for p in model.parameters())


def sum_over_processes(tensor):
    """The elementwise sum of `tensor` over every process (in place; the tensor itself alone)."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def max_over_processes(tensor):
    """The elementwise maximum of `tensor` over every process (in place; the tensor itself alone)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier():
    if active():
        dist.barrier()


def shutdown():
    if active():
        dist.destroy_process_group()


def exit_process(code):
    """End the process with `code` once the run has saved and shut down. Under torchrun the
    interpreter's own teardown is skipped: a gloo thread that outlives it can abort the process
    (SIGABRT) after everything was written, and torchrun would report the abort."""
    if world()[1] == 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
