"""Where a result came from: the hardware a run trained on and the commit of the code that trained it.

Both are recorded in every metrics row of a run (metrics.jsonl: `hardware`, `commit`; an epoch that
several runs trained in turn, resumed inside it, lists each in `epoch_provenance`) and copied into
the manifest entry of a released checkpoint.
"""
import os
import subprocess


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


def hardware(device, threads=None):
    """'NVIDIA H200' on CUDA; '2 CPU cores, AMD EPYC' on CPU (with the thread count when it differs)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    cores = os.cpu_count() or 0
    text = f"{cores} CPU cores, {cpu_model()}"
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
