"""The import graph of the flgc package points down: no circles, the core modules stay free of the run
machinery, and nothing in the repository edits sys.path."""
import ast
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from helpers import ROOT

PACKAGE = os.path.join(ROOT, "flgc")
# the core a library user imports: it must not pull in configs, data, training, checkpoints or CLIs
CORE = ("flgc.layer", "flgc.planner", "flgc.regularizer")
RUN_MACHINERY = ("flgc.config", "flgc.data", "flgc.step", "flgc.training", "flgc.evaluation", "flgc.checkpoint",
                 "flgc.cli", "flgc.runlog", "flgc.distributed", "flgc.optim", "flgc.builders", "flgc.plots",
                 "flgc.results", "flgc.releases", "flgc.release", "flgc.provenance", "flgc.reference", "flgc.flops",
                 "flgc.fileio", "flgc.deploy", "flgc.export", "flgc.models")


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
    assert "flgc.layer" in graph["flgc.regularizer"]  # from .layer import FLGConv2d
    assert "flgc.config" in graph["flgc.checkpoint"]  # from . import config as config_lib
    assert "flgc.models.registry" in graph["flgc.models"]  # a package's relative import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


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
            "heavy = sorted(m for m in sys.modules if m.startswith(('flgc.step', 'flgc.training', 'flgc.data', 'flgc.deploy', "
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
            "assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10); assert callable(flgc.deploy.convert)")
    result = subprocess.run([sys.executable, "-c", code.format(target=str(target))], cwd=tmp_path, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(target)))
    assert result.returncode == 0, result.stderr
