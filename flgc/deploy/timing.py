"""Choosing a kernel by timing it on the device it will run on."""
import copy
import time

import torch


def _synchronize(device):  # CUDA runs asynchronously: wait for the kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_once(module, x):
    start = time.perf_counter()
    module(x)
    _synchronize(x.device)
    return time.perf_counter() - start


def fastest(options, input_shapes, batch_size, device, channels_last, repeats=5):
    """The option (nn.Module) that runs fastest on `device` for a batch of inputs of its shape
    (input_shapes: one C x H x W per option, or one for all) in the given memory layout: best time
    of `repeats` rounds that call every option once after a warm-up (CUDA: synchronised, so the
    time is the kernels'). Each is timed on a copy; the option is returned as given."""
    device = torch.device(device)
    if not isinstance(input_shapes, list):
        input_shapes = [input_shapes] * len(options)
    calls = []
    for option, shape in zip(options, input_shapes):
        x = torch.randn(batch_size, *shape, device=device)
        candidate = copy.deepcopy(option).to(device)
        if channels_last:
            x, candidate = x.to(memory_format=torch.channels_last), candidate.to(memory_format=torch.channels_last)
        calls.append((candidate, x))
    best = [float("inf")] * len(options)
    with torch.no_grad():
        for candidate, x in calls:
            _seconds_once(candidate, x)
        for _ in range(repeats):
            for k, (candidate, x) in enumerate(calls):
                best[k] = min(best[k], _seconds_once(candidate, x))
    return options[best.index(min(best))]


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
