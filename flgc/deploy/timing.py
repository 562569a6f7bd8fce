"""Choosing a kernel by timing it on the device it will run on."""
import copy
import time

import torch


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(module, x, repeats=5):
    """Best wall time of module(x) over `repeats` calls after one warm-up, on x's device (CUDA:
    synchronised, so the time is the kernels', not the launch's)."""
    with torch.no_grad():
        module(x)
        _synchronize(x.device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            _synchronize(x.device)
            best = min(best, time.perf_counter() - start)
    return best


def fastest(options, input_shape, batch_size, device, channels_last):
    """The option (nn.Module, CPU) that runs fastest on `device` for a batch of `input_shape` inputs
    in the given memory layout (each timed on a copy; the option returned as given)."""
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    times = []
    for option in options:
        candidate = copy.deepcopy(option).to(device)
        if channels_last:
            candidate = candidate.to(memory_format=torch.channels_last)
        times.append(seconds(candidate, x))
    return options[times.index(min(times))]
