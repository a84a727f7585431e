"""build.py, driven as a newcomer would: its verbs, and bad input refused up front with a hint."""

import subprocess
import sys

import pytest

from buildhost import ROOT, tinymodel

pytestmark = pytest.mark.system


def build(*argv):
    return subprocess.run([sys.executable, ROOT / "build.py", *map(str, argv)], capture_output=True, text=True)


def test_tiny_model_sizes_match_the_generator(tmp_path):
    out = build("tiny-model", tmp_path / "m.gguf", "--size", "small")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"
    help_text = build("tiny-model", "--help").stdout
    assert all(size in help_text for size in tinymodel.SIZES)


@pytest.mark.parametrize("argv, message", [
    (["image", "--model", "/nonexistent.gguf"], "--model /nonexistent.gguf does not exist"),
    (["image", "--version", "1_2"], "is not a release version"),
    (["release", "--repo", "REPO", "--keys", "KEYS", "--image", "x.raw"], "no signing keys in"),
    (["keys", "rotate", "--keys", "KEYS"], "keys rotate needs --role"),
], ids=["missing-model", "bad-version", "no-keys", "rotate-without-role"])
def test_bad_input_is_refused_before_any_step(tmp_path, argv, message):
    out = build(*[str(tmp_path / a) if a in ("REPO", "KEYS") else a for a in argv])
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "==>" not in out.stderr  # no step ran


def test_booting_a_missing_image_starts_no_qemu_and_leaves_nothing(tmp_path):
    out = build("boot", "--image", tmp_path / "paladin_1_x86-64.raw")
    assert out.returncode == 1 and "does not exist" in out.stderr and "hint: build one" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no .efivars beside a file that does not exist


def test_options_after_test_go_to_pytest_and_elsewhere_are_refused():
    out = build("wheels", "-m", "unit")
    assert out.returncode == 2 and "unrecognized arguments: -m unit" in out.stderr
