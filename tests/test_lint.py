"""The linter and the layout rules run as tests."""

import ast
import subprocess
import sys

import pytest

from buildhost import ROOT

pytestmark = pytest.mark.system
SOURCES = ["appliance", "buildhost", "build.py", "tests"]
MODULE_LINES = 400
FUNCTION_LINES = 60


def python_files() -> list:
    return sorted(p for source in SOURCES for p in (ROOT / source).rglob("*.py") if p.is_file()) + [ROOT / "build.py"]


def test_pyflakes_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "pyflakes", *SOURCES], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_module_is_a_heap():
    """A module over ~400 lines says in its docstring why it is one concept ("one concept:")."""
    heaps = []
    for path in python_files():
        text = path.read_text()
        if text.count("\n") > MODULE_LINES and "one concept:" not in (ast.get_docstring(ast.parse(text)) or ""):
            heaps.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not heaps


def test_the_box_package_never_imports_host_code():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "appliance").rglob("*.py")
                 if any(isinstance(node, (ast.Import, ast.ImportFrom)) and "buildhost" in ast.dump(node)
                        for node in ast.walk(ast.parse(p.read_text())))]
    assert not offenders


def test_no_function_is_longer_than_a_screen_without_saying_why():
    """A function over FUNCTION_LINES lines of the box package or the build host says in its docstring why
    it stays whole ("one piece:")."""
    long = [f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in python_files() if path.parts[len(ROOT.parts)] != "tests"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > FUNCTION_LINES and "one piece:" not in (ast.get_docstring(node) or "")]
    assert not long
