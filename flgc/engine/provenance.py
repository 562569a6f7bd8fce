"""Where a result came from: the hardware a run trained on and the commit of the code that trained it.

Both are recorded in every metrics row of a run (metrics.jsonl: `hardware`, `commit`; an epoch that
several runs trained in turn, resumed inside it, lists each in `epoch_provenance`) and copied into
the manifest entry of a released checkpoint.
"""
import functools
import os
import subprocess

import torch


def cpu_model():
    """The CPU's model name as the kernel reports it (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


@functools.lru_cache(maxsize=None)  # asked every epoch; the answer cannot change within a process
def cpu_computes_bf16():
    """Whether this CPU has bf16 arithmetic in hardware (x86 AVX512-BF16 or AMX, Arm's BF16
    extension). Elsewhere bf16 is emulated: a training step was measured 15x slower than fp32 on an
    AVX2-only CPU (docs/training-speed.md)."""
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None)
    if any(check is not None and check() for check in native):
        return True
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("Features") and " bf16" in line for line in cpuinfo)  # aarch64
    except OSError:
        return False


def hardware(device, threads=None):
    """'NVIDIA H200' on CUDA; '2 CPU cores, AMD EPYC (native bf16)' on CPU, or '(no native bf16)' (with the
    thread count when it differs): CPUs of one model name differ in whether they compute bf16, which
    sets the precision of train.amp=auto and the speed of a run."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = os.cpu_count() or 0
    text = f"{cores} CPU cores, {cpu_model()} ({'' if cpu_computes_bf16() else 'no '}native bf16)"
    return text if not threads or threads == cores else f"{text}, {threads} threads"


def source_commit(directory=None):
    """The git commit of the code in `directory` (default: this package's checkout), with '+changes'
    when tracked files differ from it; None outside a git checkout or without git."""
    directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")
