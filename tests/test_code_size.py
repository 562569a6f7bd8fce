"""Functions in flgc/ stay short enough to read at once: at most MAX_LINES lines each (def to last line)."""
import ast
import os

from helpers import ROOT

MAX_LINES = 40
# files allowed longer functions, each with the reason (none today)
EXEMPT = {}


def long_functions(path):
    """[(name, first line, line count)] of the functions and methods in `path` longer than MAX_LINES."""
    tree = ast.parse(open(path).read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                found.append((node.name, node.lineno, lines))
    return found


def package_files():
    for directory, _, files in os.walk(os.path.join(ROOT, "flgc")):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, "/")


def test_no_function_in_flgc_is_longer_than_the_limit():
    files = list(package_files())
    assert "flgc/deploy/orders.py" in files and set(EXEMPT) <= set(files)
    too_long = [f"{path}:{line} {name} ({lines} lines)" for path in files if path not in EXEMPT
                for name, line, lines in long_functions(os.path.join(ROOT, path))]
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"


def test_the_scan_counts_a_function_from_def_to_its_last_line(tmp_path):
    path = tmp_path / "probe.py"
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    path.write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n")
    assert long_functions(str(path)) == [("long", 6, MAX_LINES + 1)]
