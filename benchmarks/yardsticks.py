"""Benchmark yardsticks shared by the benchmarks/bench_*.py scripts (imported as a sibling module, and by
the tests with benchmarks/ on pytest's pythonpath): interleaved timing with medians, CUDA-event timing,
the speed bound of a grouped 1x1 conv, balanced FLGC structures, and ONNX Runtime sessions. Not part of
the flgc library.

Speed claims are ratios measured side by side in one process, never absolute thresholds in tests.
"""
import ctypes
import ctypes.util
import statistics
import time

import torch
import torch.nn as nn

from flgc import deploy
from flgc.deploy.mobilenet import deployed_roles
from flgc.method.layer import flgc_layers
from flgc.models.mobilenetv2 import InvertedResidual


def reuse_freed_memory():
    """Make glibc's malloc serve every allocation from its heap and keep freed memory there, so that
    a freed activation's pages are handed out again instead of being unmapped and faulted in afresh:
    by default any block over 32 MB is a new mmap, paid page by page on every call. False where the
    C library is not glibc (no mallopt). Must run before the large allocations it should affect."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # glibc's <malloc.h> parameter numbers
    settings = ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 256 << 20))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def _cuda_timer(run):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _wall_timer(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved_medians(runners, repeats, warmup=2, cuda=False):
    """{name: median seconds} of calling each runner, in rounds that visit every runner once.
    With cuda, each call is timed with CUDA events (the device's time, host launch included)."""
    timer = _cuda_timer if cuda else _wall_timer
    for run in runners.values():
        for _ in range(warmup):
            run()
    if cuda:
        torch.cuda.synchronize()
    samples = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            samples[name].append(timer(run))
    return {name: statistics.median(values) for name, values in samples.items()}


class SliceConv(nn.Module):
    """Speed yardstick: a dense conv over the first in/G input channels (uniform-G MACs, no gather)
    with conv's geometry. Not a valid model; it bounds what a G-group conv can cost."""

    def __init__(self, conv, groups):
        super().__init__()
        self.width = conv.in_channels // groups
        self.conv = nn.Conv2d(self.width, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=True)

    def forward(self, x):
        return self.conv(x[:, :self.width])


def mobilenet_bound(dense_deployed, groups, where):
    """The deployed dense MobileNetV2 with its chosen 1x1 convs (project | expand | both) replaced
    by SliceConv."""
    chosen = {"project": ("project",), "expand": ("expand",), "both": ("expand", "project")}[where]
    for module in dense_deployed.modules():
        if isinstance(module, InvertedResidual):
            roles = deployed_roles(module.expands)  # a dense block's channels need no gather in front
            for role in chosen:
                if role in roles:
                    module.conv[roles.index(role)] = SliceConv(module.conv[roles.index(role)], groups)
    return dense_deployed


def generic_bound(dense_deployed, paths, groups):
    """The deployed dense network with the convs at `paths` (those FLGC replaces) as SliceConv."""
    for path in paths:
        dense_deployed.set_submodule(path, SliceConv(dense_deployed.get_submodule(path), groups))
    return dense_deployed


def masked_model(model):
    """The training form (FLGC masks computed every forward) with BatchNorm folded elsewhere."""
    return deploy.fold_batchnorm(model)


def ort_session(model_bytes, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle ORT threads must not spin on the cores the next (torch) measurement needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def count_flgc(model):
    return len(flgc_layers(model))


def assign_balanced(model, seed=0):
    """Give every FLGConv2d of model a random balanced hard structure (each group holds in/G input
    channels and out/G filters, rounded), as one-hot logits of a shuffled round-robin; returns model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in flgc_layers(model):
            for logits in (layer.input_group_logits, layer.output_group_logits):
                groups = torch.randperm(len(logits), generator=generator) % layer.groups
                logits.copy_(nn.functional.one_hot(groups, layer.groups) * 3.0)
    return model


def uniform_groups(model, paths, groups):
    """model with the convs at `paths` as torch's standard grouped conv (G equal groups, new weights)."""
    for path in paths:
        conv = model.get_submodule(path)
        model.set_submodule(path, nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                            conv.padding, conv.dilation, groups, bias=conv.bias is not None))
    return model
