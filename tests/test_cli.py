"""`paladin`, the box's command line."""

import subprocess

import pytest

from served import PALADIN

pytestmark = pytest.mark.unit


def test_token_create_prints_the_token_last(tmp_path):
    out = subprocess.run([PALADIN, "token", "create", "--data-dir", tmp_path, "--name", "x"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1].startswith("pal_")
    listing = subprocess.run([PALADIN, "token", "list", "--data-dir", tmp_path], capture_output=True, text=True)
    assert listing.stdout == "x\tlive\n"


def test_model_download_without_target_is_refused(tmp_path):
    out = subprocess.run([PALADIN, "model", "download", "--data-dir", tmp_path], capture_output=True, text=True)
    assert out.returncode != 0 and "needs a target" in out.stderr
