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


def fastest(options, input_shapes, batch_size, device, channels_last):
    """The option (nn.Module, CPU) that runs fastest on `device` for a batch of inputs of its shape
    (input_shapes: one C x H x W per option, or one for all) in the given memory layout. Each is
    timed on a copy; the option is returned as given."""
    device = torch.device(device)
    if not isinstance(input_shapes, list):
        input_shapes = [input_shapes] * len(options)
    times = []
    for option, shape in zip(options, input_shapes):
        x = torch.randn(batch_size, *shape, device=device)
        candidate = copy.deepcopy(option).to(device)
        if channels_last:
            x, candidate = x.to(memory_format=torch.channels_last), candidate.to(memory_format=torch.channels_last)
        times.append(seconds(candidate, x))
    return options[times.index(min(times))]


def input_shapes(model, paths, input_size):
    """{path: input shape C x H x W} of the submodules at `paths` on one input of input_size."""
    shapes = {}
    hooks = [model.get_submodule(path).register_forward_hook(
        lambda module, inputs, output, path=path: shapes.__setitem__(path, tuple(inputs[0].shape[1:])))
        for path in paths]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes
