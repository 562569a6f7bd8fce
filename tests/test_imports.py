"""The import graph of the flgc package points down: no circles, each room imports only rooms below it
(records -> engine -> models -> method -> the ground floor), the method stays free of the run machinery,
the training core free of deployment (flgc.deploy, an optional layer on top), and nothing in the
repository edits sys.path."""
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
from helpers import ROOT, write_tiny_cifar

PACKAGE = os.path.join(ROOT, "flgc")
# the core a library user imports: it must not pull in configs, data, training, checkpoints or CLIs
CORE = ("flgc.method.layer", "flgc.method.planner", "flgc.method.regularizer")
RUN_MACHINERY = ("flgc.engine", "flgc.records", "flgc.models", "flgc.deploy", "flgc.method.flops", "flgc.fileio")
# the rooms from the bottom up: a module imports only modules of its own room or of a room below it
ROOMS = (("flgc.errors", "flgc.fileio", "flgc.extras"), ("flgc.method",), ("flgc.models",), ("flgc.engine",),
         ("flgc.records",))
# deployment sits on top of the method and the models, and needs of the engine only the checkpoint format
DEPLOYMENT_MAY_IMPORT = ROOMS[0] + ROOMS[1] + ROOMS[2] + ("flgc.engine.checkpoint",)
DEPLOYMENT = "flgc.deploy"  # the optional layer: everything under it may import the core, never the reverse
# what only deployment may import: its compiled kernels' build, its exporters
DEPLOYMENT_ONLY = ("onnx", "onnxruntime", "ninja", "torch.utils.cpp_extension")


def module_files():
    """{dotted module name: path} for every .py file under flgc/."""
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module, path, is_package):
    """For every import in `module` (module level and inside functions), the names it may refer to, most
    specific first: `from . import config` is flgc.config if that is a module, else an attribute of flgc."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            yield from ((alias.name,) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield from ((f"{base}.{alias.name}", base) for alias in node.names)


def import_graph():
    """{module: set of flgc modules it imports}; importing a name from a package's __init__ is an edge to it."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for candidates in imported_names(module, path, path.endswith("__init__.py")):
            name = next((c for c in candidates if c in modules), None)
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node], _ = "open", stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "flgc.method.layer" in graph["flgc.method.regularizer"]  # from .layer import FLGConv2d
    assert "flgc.engine.config" in graph["flgc.engine.checkpoint"]  # from . import config as config_lib
    assert "flgc.method.layer" in graph["flgc.models.pointwise"]  # from ..method.layer import FLGConv2d
    assert "flgc.models.registry" in graph["flgc.models"]  # a package's relative import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def room_of(module):
    """The floor of `module` (0: the ground floor ... 4: records), or None outside the rooms (flgc.deploy)."""
    return next((floor for floor, prefixes in enumerate(ROOMS)
                 if any(module == p or module.startswith(p + ".") for p in prefixes)), None)


def test_every_module_lives_in_a_room_and_imports_point_down():
    """flgc/__init__.py (the public API) may reach into any room; every other module imports only its own
    room and the rooms below; deployment only the rooms it builds on and the checkpoint format."""
    graph = import_graph()
    for module, targets in graph.items():
        if module == "flgc":
            continue
        if module == DEPLOYMENT or module.startswith(DEPLOYMENT + "."):
            allowed = [t for t in targets if not t.startswith(DEPLOYMENT)]
            upward = sorted(t for t in allowed if not any(t == p or t.startswith(p + ".") for p in DEPLOYMENT_MAY_IMPORT))
        else:
            assert room_of(module) is not None, f"{module} is in no room"
            upward = sorted(t for t in targets if t == "flgc" or room_of(t) is None or room_of(t) > room_of(module))
        assert not upward, f"{module} imports {upward}, above its room"


def core_modules(graph):
    return sorted(m for m in graph if m != DEPLOYMENT and not m.startswith(DEPLOYMENT + "."))


def external_imports(path):
    """Every module name an import statement of the file names (absolute imports only)."""
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module


def test_the_training_core_imports_nothing_of_deployment():
    graph, files = import_graph(), module_files()
    core = core_modules(graph)
    assert {"flgc.method.layer", "flgc.method.planner", "flgc.method.flops", "flgc.engine.checkpoint",
            "flgc.engine.training", "flgc.engine.step"} <= set(core)
    assert "flgc.deploy.native" in graph and "flgc.deploy.export" in graph
    for module in core:
        upward = sorted(m for m in reachable(graph, module) if m == DEPLOYMENT or m.startswith(DEPLOYMENT + "."))
        assert not upward, f"{module} imports {upward}"
        named = sorted(n for n in external_imports(files[module])
                       if any(n == d or n.startswith(d + ".") for d in DEPLOYMENT_ONLY))
        assert not named, f"{module} imports {named}, which only flgc.deploy may"


def test_the_static_check_sees_an_import_of_deployment(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from flgc.deploy import native\n    import onnx\n")
    assert sorted(external_imports(str(path))) == ["flgc.deploy", "onnx"]


# the core, used with flgc.deploy and the deploy extra's packages made unimportable: a model from a config,
# its FLOPs, a short training run (checkpoints, TensorBoard, a grouped frozen forward), the checkpoint loaded
# back; a deployed checkpoint is refused in one line naming the extra
BLOCKED_CORE_RUN = """
import sys

BLOCKED = ("flgc.deploy", "onnx", "onnxruntime", "ninja", "matplotlib")
# None in sys.modules: what Python takes for a module that cannot be imported (import raises ImportError,
# importlib.util.find_spec answers None, as for a package not installed); submodules need their parent
for name in BLOCKED:
    sys.modules[name] = None
import torch
from flgc.engine import checkpoint, config
from flgc.engine.training import fit
from flgc.errors import UsageError
from flgc.method import flops
from flgc.method.layer import FLGConv2d
from flgc.models import build_model

cfg = config.load("configs/mbv2_flgc8.yaml", config.parse_overrides([
    "data.root=" + sys.argv[1], "data.verify_checksums=false", "out_dir=" + sys.argv[2], "train.batch_size=20",
    "train.epochs=2", "flgc.freeze_epoch=2", "flgc.frozen_compute=grouped", "train.progress=false", "device=cpu"]))
mflops, params = flops.count(build_model(cfg))
assert 0 < mflops < 100 and params > 0
fit(cfg)
model, _, payload = checkpoint.load_model(sys.argv[2] + "/last.pt")
assert payload["epoch"] == 2 and flops.count(model)[0] == payload["metrics"]["mflops"]
layer = next(m for m in model.modules() if isinstance(m, FLGConv2d))
layer.freeze(grouped=True)
x = torch.randn(2, layer.in_channels, 4, 4).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    assert torch.allclose(layer(x), torch.nn.functional.conv2d(x, layer.weight * layer.hard_mask()[:, :, None, None]),
                          atol=1e-5)
try:
    checkpoint.load_model(sys.argv[3])
except UsageError as err:
    print("refused:", err)
blocked = sorted(m for m, module in sys.modules.items() if m.startswith(BLOCKED) and module is not None)
assert not blocked, blocked
print("core ok")
"""


@pytest.mark.slow  # a whole process with the deployment layer blocked (about 10 s)
def test_the_core_trains_counts_and_loads_without_deployment(tmp_path):
    """The direction in practice: the training core runs with flgc.deploy and the deploy and plot extras
    unimportable; a deployed checkpoint then needs the deploy layer, and says so in one line."""
    import torch

    from flgc import deploy
    from flgc.engine import checkpoint, config
    from flgc.models import build_model
    cfg = config.load("configs/mbv2_flgc8.yaml")
    deployed = deploy.deploy_model(build_model(cfg).eval(), strategy="conv")
    checkpoint.save(str(tmp_path / "deployed.pt"), checkpoint.deployed_payload(deployed, config.to_dict(cfg)))
    data = write_tiny_cifar(str(tmp_path / "data"), per_batch=8, test=8)
    script = tmp_path / "core_only.py"
    script.write_text(textwrap.dedent(BLOCKED_CORE_RUN))
    done = subprocess.run([sys.executable, str(script), data, str(tmp_path / "run"), str(tmp_path / "deployed.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "core ok"
    refused = next(line for line in lines if line.startswith("refused:"))
    assert 'pip install -e ".[deploy]"' in refused and "deployed model" in refused
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2


def test_deployment_registers_its_flop_hooks_and_checkpoint_rebuilder():
    from flgc import deploy
    from flgc.engine import checkpoint
    from flgc.method import flops
    assert flops._REGISTERED_HOOKS[deploy.BlockPointwise] is deploy.counting.block_pointwise_hook
    assert flops._REGISTERED_HOOKS[deploy.GroupedConv] is deploy.counting.grouped_conv_hook
    assert checkpoint.rebuilder("deploy_spec", "unused.pt") is deploy.rebuild


def test_the_core_imports_nothing_of_the_run_machinery():
    graph = import_graph()
    for module in CORE:
        assert module in graph, module
        upward = sorted(m for m in reachable(graph, module) if m.startswith(RUN_MACHINERY))
        assert not upward, f"{module} imports {upward}"


def repository_files():
    """The repository's source, script and config files (hidden, build and run directories left out)."""
    skip = {"build", "runs", "data", "__pycache__"}
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith((".py", ".sh", ".cfg", ".toml", ".ini")):
                yield os.path.join(directory, name)
    ci = os.path.join(ROOT, ".ci")
    yield from (os.path.join(ci, n) for n in (os.listdir(ci) if os.path.isdir(ci) else ()))


def test_no_sys_path_edits_anywhere():
    files = [p for p in repository_files() if p != os.path.abspath(__file__)]
    assert any(p.endswith("train.py") for p in files)
    offenders = [os.path.relpath(p, ROOT) for p in files if "sys.path" in open(p, errors="replace").read()]
    assert not offenders, f"sys.path edits in {offenders}"


def test_import_flgc_is_light_and_gives_the_public_api():
    code = ("import sys, flgc; assert flgc.__version__; flgc.FLGConv2d, flgc.group_regularizer, flgc.convert_model;"
            "heavy = sorted(m for m in sys.modules if m.startswith(('flgc.engine', 'flgc.records', 'flgc.deploy', "
            "'torchvision', 'yaml', 'onnx')));"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=tempfile.gettempdir(), capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_pip_install_gives_the_package_with_its_subpackages(tmp_path):
    """`pip install .` (here into a target directory, without dependencies) holds flgc, flgc.models and
    flgc.deploy, and they import from another directory without the repository."""
    source, target = tmp_path / "source", tmp_path / "site"  # a copy: the build writes build/ next to pyproject.toml
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "runs", "data", "__pycache__"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    code = ("import flgc, flgc.models, flgc.deploy, torch; assert flgc.__file__.startswith({target!r});"
            "m = flgc.create_model('mobilenetv2_cifar', pointwise='flgc', groups=8);"
            "assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10); assert callable(flgc.deploy.deploy_model);"
            "from flgc.deploy import native; assert native.SOURCE.is_file(), native.SOURCE")
    result = subprocess.run([sys.executable, "-c", code.format(target=str(target))], cwd=tmp_path, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(target)))
    assert result.returncode == 0, result.stderr
