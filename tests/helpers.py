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


def load_script(path):
    """The module of a repository entry point (e.g. "eval.py", "scripts/plot_groups.py"), imported by path."""
    import importlib.util
    name = "script_" + os.path.splitext(path)[0].replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def run_main(path, *argv):
    """Run an entry point's main(argv) in this process as its command line would; returns the exit code.
    Output goes to the real stdout/stderr (read it with pytest's capsys)."""
    import inspect
    from unittest import mock

    from flgc.cli import run
    main, argv = load_script(path).main, [str(a) for a in argv]
    try:
        if inspect.signature(main).parameters:
            run(main, argv)
        else:  # an entry point that reads sys.argv itself
            with mock.patch.object(sys, "argv", [os.path.basename(path), *argv]):
                run(main)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0
