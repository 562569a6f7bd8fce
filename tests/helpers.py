"""Shared test helpers: tiny generated CIFAR-10 data and running the entry points."""
import os
import subprocess
import sys

import torch
import torch.nn as nn

from flgc.engine.data import write_random_cifar

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

    from flgc.engine.cli import run
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


class Result:
    """An in-process entry-point run, shaped like subprocess.CompletedProcess: returncode, stdout, stderr."""
    def __init__(self, returncode, captured):
        self.returncode, self.stdout, self.stderr = returncode, captured.out, captured.err


def run_captured(path, *argv):
    """run_main with stdout and stderr captured (for fixtures wider than one test, where capsys is not
    available); a Result. torch's thread count is restored afterwards."""
    import contextlib
    import io
    import types

    import torch
    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_main(path, *argv)
    finally:
        torch.set_num_threads(threads)
    return Result(code, types.SimpleNamespace(out=out.getvalue(), err=err.getvalue()))


def assert_usage_error(result, *fragments):
    """Exit code 2 and exactly one stderr line that holds every fragment."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def last_json(result):
    """The JSON object on the last stdout line of a successful run."""
    import json
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# deployment equality: max |logit difference| allowed between a training model and its deployed form (fp32)
TOLERANCE = 1e-4


def randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
    return model.eval()


def max_difference(model, deployed, x):
    with torch.no_grad():
        reference = model(x)
        plain = deployed(x)
        channels_last = deployed.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    return max(float((reference - plain).abs().max()), float((reference - channels_last).abs().max()))


def kernels_missing():
    """Why flgc's compiled kernels cannot run here ("" when they can be built: ninja and a C++ compiler found)."""
    if os.environ.get("FLGC_NATIVE") == "0":
        return "FLGC_NATIVE=0: compiled kernels switched off"
    from flgc.deploy import native
    problem = native.missing_tools()
    return f"needs flgc's compiled kernels: {problem}" if problem else ""


# CIFAR-10's batches.meta byte for byte (the python version; md5 5ff9c542aee3614f3951f8cda6e48888, the one
# torchvision checks): label names, num_cases_per_batch 10000 and num_vis 3072, pickled by Python 2
CIFAR10_META = (b"\x80\x02}q\x01(U\x13num_cases_per_batchq\x02M\x10'U\x0blabel_namesq\x03]q\x04(U\x08airplaneq\x05"
                b"U\nautomobileq\x06U\x04birdq\x07U\x03catq\x08U\x04deerq\tU\x03dogq\nU\x04frogq\x0bU\x05horseq\x0c"
                b"U\x04shipq\rU\x05truckq\x0eeU\x07num_visq\x0fM\x00\x0cu.")
# one colour per class, far apart in RGB: what tells the classes apart survives a crop (padding 4) and a flip
CLASS_COLOURS = ((230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230),
                 (30, 230, 230), (230, 230, 230), (30, 30, 30), (230, 130, 30), (130, 30, 230))


def write_colour_cifar(root, per_batch=80, test=100, seed=0, shuffle_labels=False):
    """A learnable task in the CIFAR-10 python layout under root/cifar-10-batches-py/ (5 training batches of
    `per_batch` images, a test batch of `test`, the official batches.meta): an image is its class's colour
    with a per-image tint (std 12 per channel) and pixel noise (std 8); every batch holds the classes in
    equal numbers, in random order. shuffle_labels: the training labels permuted within each batch, so
    that they no longer say the images' colour (the test labels stay true). Returns root."""
    import pickle

    import numpy as np
    rng = np.random.default_rng(seed)
    colours = np.array(CLASS_COLOURS, dtype=np.float32)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        labels = rng.permutation(np.arange(count) % len(colours))
        pixels = (colours[labels][:, None, None, :] + rng.normal(0, 12, (count, 1, 1, 3))
                  + rng.normal(0, 8, (count, 32, 32, 3)))
        data = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(count, 3072)
        if shuffle_labels and name != "test_batch":
            labels = rng.permutation(labels)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        f.write(CIFAR10_META)
    return root
