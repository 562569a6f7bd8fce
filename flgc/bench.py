"""Benchmark helpers: interleaved timing with medians, and the inference variants of MobileNetV2.

Speed claims are ratios measured side by side in one process, never absolute thresholds in tests.
"""
import copy
import io
import statistics
import time

import torch
import torch.nn as nn

from . import deploy
from .layer import FLGConv2d


def interleaved_medians(runners, repeats, warmup=2):
    """{name: median seconds} of calling each runner, in rounds that visit every runner once."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


class SliceConv(nn.Module):
    """Speed yardstick: a dense 1x1 conv over the first in/G input channels (uniform-G MACs, no
    gather). Not a valid model; it bounds what a G-group 1x1 can cost."""

    def __init__(self, conv, groups):
        super().__init__()
        self.width = conv.in_channels // groups
        self.conv = nn.Conv2d(self.width, conv.out_channels, 1, bias=True)

    def forward(self, x):
        return self.conv(x[:, :self.width])


def bound_model(dense_deployed, groups, where):
    """The BN-folded dense network with its chosen 1x1 convs replaced by SliceConv."""
    for module in dense_deployed.modules():
        if deploy._is_inverted_residual_deployed(module):
            layers = module.conv
            if where in ("project", "both"):
                layers[len(layers) - 1] = SliceConv(layers[len(layers) - 1], groups)
            if where in ("expand", "both") and len(layers) == 5 and isinstance(layers[0], nn.Conv2d) \
                    and layers[0].kernel_size == (1, 1):
                layers[0] = SliceConv(layers[0], groups)
    return dense_deployed


def masked_model(model):
    """The training form (FLGC masks computed every forward) with BatchNorm folded elsewhere."""
    return deploy.fold_batchnorm(model)


def onnx_bytes(model, batch):
    """The model exported to ONNX (opset 17, dynamic batch) as bytes."""
    buffer = io.BytesIO()
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    torch.onnx.export(model, (torch.randn(batch, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


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
    return sum(isinstance(m, FLGConv2d) for m in model.modules())
