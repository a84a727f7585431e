"""The linter runs as a test: no unused imports, undefined names or shadowed definitions."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.unit


def test_pyflakes_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "pyflakes", "appliance", "build.py", "tests"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
