import subprocess

import pytest

from appliance import tinymodel
from conftest import PALADIN

pytestmark = pytest.mark.unit


def test_tiny_model_sizes_match_the_generator(tmp_path):
    out = subprocess.run([PALADIN, "tiny-model", tmp_path / "m.gguf", "--size", "small"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"
    help_text = subprocess.run([PALADIN, "tiny-model", "--help"], capture_output=True, text=True).stdout
    assert all(size in help_text for size in tinymodel.SIZES)


def test_token_create_prints_the_token_last(tmp_path):
    out = subprocess.run([PALADIN, "token", "create", "--data-dir", tmp_path, "--name", "x"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1].startswith("pal_")
    listing = subprocess.run([PALADIN, "token", "list", "--data-dir", tmp_path], capture_output=True, text=True)
    assert listing.stdout == "x\tlive\n"


def test_model_download_without_target_is_refused(tmp_path):
    out = subprocess.run([PALADIN, "model", "download", "--data-dir", tmp_path], capture_output=True, text=True)
    assert out.returncode != 0 and "needs a target" in out.stderr
