"""Compiled CPU kernels of deployed networks (native.cpp), built on first use: for channels that
travel in permuted orders (sums, gathers) and for grouped 1x1 convs on channels_last tensors.

torch's C++ extension loader compiles native.cpp once per torch build and caches the library
(TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). It needs a C++ compiler with OpenMP (g++,
or the one CXX names) and ninja (the deploy extra: pip install -e ".[deploy]"). Where either is
missing, the build fails, or FLGC_NATIVE=0 is set, every caller uses plain torch ops instead: the
same results, slower on the CPU.

The kernels serve inference only (no autograd): callers check eligible() first.
"""
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

from ..errors import UsageError
from ..extras import install_command

SOURCE = Path(__file__).with_name("native.cpp")
_state = {}
_lock = threading.Lock()


def missing_tools():
    """What the kernels' build lacks, in one line ("" when ninja and a C++ compiler are found; a compiler
    that is found may still fail to build them). Looked up as torch's extension loader does: on PATH."""
    if shutil.which("ninja") is None:
        return f"ninja is not installed ({install_command('deploy')})"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler {compiler!r} found (install g++, or name one with CXX)"
    return ""


def require(purpose):
    """UsageError, one line, when the kernels cannot be built here; `purpose`: what needs them."""
    problem = missing_tools()
    if problem:
        raise UsageError(f"{purpose} needs flgc's compiled kernels: {problem}")


def _build():
    if os.environ.get("FLGC_NATIVE", "1") == "0":
        return "FLGC_NATIVE=0"
    problem = missing_tools()
    if problem:
        _warn(problem)
        return problem
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import warns that a CUDA build of torch finds no CUDA runtime
    try:
        from torch.utils.cpp_extension import load
        # one library per torch build: torch's cache folder is named by Python and CUDA versions only
        name = "flgc_native_" + "".join(ch if ch.isalnum() else "_" for ch in torch.__version__)
        load(name, [str(SOURCE)], extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
             is_python_module=False, verbose=False)
    except Exception as error:  # no compiler, no ninja, no OpenMP: the torch ops remain
        reason = _reason(str(error))
        _warn(reason)
        return reason
    finally:
        logger.setLevel(level)
    return ""


def _warn(reason):
    print(f"warning: flgc's compiled CPU kernels are not available ({reason}); using torch ops "
          "(FLGC_NATIVE=0 skips the build)", file=sys.stderr)


def _reason(message):
    """One short line out of a build failure: the compiler's first complaint where there is one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Error building extension"):
        complaints = [line for line in lines[1:] if "error" in line.lower() or "not found" in line.lower()]
        return "the C++ build failed: " + (complaints[0] if complaints else "see torch.utils.cpp_extension")[:160]
    return (lines[0] if lines else "unknown error")[:160]


def available():
    """Whether the compiled kernels are loaded (builds them on the first call)."""
    if "reason" not in _state:
        with _lock:
            if "reason" not in _state:
                _state["reason"] = _build()
    return not _state["reason"]


def unavailable_reason():
    available()
    return _state["reason"]


def eligible(*tensors):
    """The kernels apply: float32 NCHW CPU tensors in one memory layout, no autograd, not traced."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if not all(t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        return False
    layouts = {"contiguous" if t.is_contiguous() else "channels_last" if t.is_contiguous(memory_format=torch.channels_last)
               else None for t in tensors}
    return None not in layouts and len(layouts) == 1 and available()


def permuted_add_(base, other, index, relu=False):
    """base[:, index[i]] += other[:, i] in place, then max(base, 0) over all of base with relu."""
    torch.ops.flgc.permuted_add_(base, other, index, relu)
    return base


def permuted_sum(a, b, left, right, relu=False, reuse=False):
    """a[:, left] + b[:, right] in a's memory layout, max(., 0) with relu. reuse: the result may be
    written over a (channels_last, as many channels), which must then be read by nothing else."""
    return torch.ops.flgc.permuted_sum(a, b, left, right, relu, reuse)


def gather_channels(x, index, stride=1):
    """x[:, index, ::stride, ::stride] in x's memory layout."""
    return torch.ops.flgc.gather_channels(x, index, stride)


def grouped_pointwise(x, weight, bias):
    """conv2d(x, weight, bias, groups=G) for a 1x1 stride-1 conv on a channels_last x, from
    pointwise_weight(weight, G); output channels_last."""
    return torch.ops.flgc.grouped_pointwise(x, weight, bias)


def grouped_pointwise_sum(x, weight, bias, b, left, right, relu=False, reuse=False):
    """permuted_sum(grouped_pointwise(x, weight, bias), b, left, right, relu) in one pass: the conv's
    output is summed from cache, never written whole. Output channels_last. reuse: the result may be
    written over b (channels_last, as many channels), which must then be read by nothing else."""
    return torch.ops.flgc.grouped_pointwise_sum(x, weight, bias, b, left, right, relu, reuse)


def pointwise_weight(weight, groups):
    """A grouped 1x1 conv's weight (out x in/G x 1 x 1) as grouped_pointwise takes it: G x in/G x out/G."""
    out, width = weight.shape[:2]
    return weight.reshape(groups, out // groups, width).transpose(1, 2).contiguous()


def row_isa(choice=""):
    """The instruction set the channels_last kernels use: "avx2" (AVX2 + FMA: permutations eight rows
    at a time through 8 x 8 transposes, the vectorised grouped 1x1 conv) or "plain" (scalar loops).
    The best the CPU has unless chosen here (for tests and benchmarks; "best" restores it). Returns
    the one in use."""
    if not available():
        raise RuntimeError(f"flgc's compiled kernels are not available: {unavailable_reason()}")
    return torch.ops.flgc.row_isa(choice)
