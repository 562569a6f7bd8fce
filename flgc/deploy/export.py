"""Export of a (deployed) network to ONNX or TorchScript.

The input is N x C x H x W float32 images (dynamic batch for ONNX), the output the model's logits.
"""
import copy
import io

import torch

from ..extras import require
from ..fileio import atomic_path

FORMATS = ("onnx", "torchscript")


def check_format(fmt):
    """ValueError for an unknown format; UsageError (one line) for one whose exporter is not installed (onnx:
    the deploy extra)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require("onnx", "ONNX export")


def _exportable(model):
    return copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)


def onnx_bytes(model, batch, input_size=(3, 32, 32)):
    """The model exported to ONNX (opset 17, dynamic batch, input "images", output "logits") as bytes."""
    check_format("onnx")
    buffer = io.BytesIO()
    torch.onnx.export(_exportable(model), (torch.randn(batch, *input_size),), buffer, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


def torchscript(model, batch, input_size=(3, 32, 32)):
    """The model traced to TorchScript (a ScriptModule, CPU)."""
    with torch.no_grad():
        return torch.jit.trace(_exportable(model), torch.randn(batch, *input_size))


def export(model, fmt, path, batch=1, input_size=(3, 32, 32)):
    """Write the model in `fmt` (onnx | torchscript) to path, through a temporary file renamed into
    place: an existing file is only ever replaced by a complete one."""
    check_format(fmt)
    with atomic_path(path) as temp:
        if fmt == "onnx":
            with open(temp, "wb") as f:
                f.write(onnx_bytes(model, batch, input_size))
        else:
            torchscript(model, batch, input_size).save(temp)
