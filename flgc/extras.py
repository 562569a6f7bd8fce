"""The optional parts of flgc and the pip extras that install them.

`pip install -e .` gives training, evaluation, FLOP counting and TensorBoard logging. The rest comes
with an extra: plot (matplotlib: results_table.py --plot, plot_groups.py, flgc.plot_interval) and
deploy (ninja for the compiled kernels, onnx and onnxruntime for export). Entry points call require()
while checking their arguments, so a missing part is one line (UsageError, exit code 2) before any work.
"""
import importlib.util

from .errors import UsageError

EXTRA_OF = {"matplotlib": "plot", "ninja": "deploy", "onnx": "deploy", "onnxruntime": "deploy"}


def install_command(extra):
    return f'pip install -e ".[{extra}]"'


def installed(module):
    """Whether `module` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module, purpose):
    """UsageError, one line naming the extra to install, when `module` is missing; `purpose`: what needs it."""
    if not installed(module):
        raise UsageError(f"{purpose} needs {module}, which is not installed: {install_command(EXTRA_OF[module])}")
