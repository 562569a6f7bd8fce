"""Shared test helpers: tiny generated CIFAR-10 data and running the entry points."""
import os
import subprocess
import sys

from flgc.data import write_random_cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a directory holding cifar-10-batches-py/ (real CIFAR-10 or a re-encoded copy) for the real-data test
CIFAR10_ROOT = os.environ.get("FLGC_CIFAR10_ROOT")


def write_tiny_cifar(root, per_batch=16, test=40, seed=0):
    """Random images in the CIFAR-10 python layout (5 train batches + test batch + meta)."""
    return write_random_cifar(root, per_batch, test, seed)


def run_cli(*args, cwd=ROOT, timeout=600):
    """Run a repository entry point; returns CompletedProcess with text output."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
