"""`paladin`, the box's command line."""

import subprocess

import pytest

from tests.support.served import PALADIN
from appliance.layout import DataDir

pytestmark = pytest.mark.system


def test_token_create_prints_the_token_last(tmp_path):
    out = subprocess.run([PALADIN, "token", "create", "--data-dir", tmp_path, "--name", "x"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1].startswith("pal_")
    listing = subprocess.run([PALADIN, "token", "list", "--data-dir", tmp_path], capture_output=True, text=True)
    assert listing.stdout == "x\tlive\n"


def test_model_download_without_target_is_refused(tmp_path):
    out = subprocess.run([PALADIN, "model", "download", "--data-dir", tmp_path], capture_output=True, text=True)
    assert out.returncode != 0 and "needs a target" in out.stderr


def test_config_get_answers_one_key_as_json_for_units_to_test(tmp_path):
    """systemd-timesyncd's drop-in asks `paladin config get device.time_sync` whether to run at all."""
    def get(key):
        return subprocess.run([PALADIN, "config", "get", key, "--data-dir", tmp_path, "--config", tmp_path / "none"],
                              capture_output=True, text=True)

    assert get("device.time_sync").stdout == "true\n"
    DataDir(tmp_path).owner_config.write_text("device: {time_sync: false}\n")
    assert get("device.time_sync").stdout == "false\n"
    missing = get("device.nope")
    assert missing.returncode != 0 and "no key 'device.nope'" in missing.stderr


def test_setup_reset_and_factory_reset_from_the_console(tmp_path):
    def paladin(*argv):
        return subprocess.run([PALADIN, *argv, "--data-dir", tmp_path, "--config", tmp_path / "none"],
                              capture_output=True, text=True)

    first = paladin("firstboot")
    code = first.stdout.split("Setup code: ")[1].split()[0]
    assert paladin("setup", "reset").stdout.split("Setup code: ")[1].split()[0] != code
    refused = paladin("factory-reset")
    assert refused.returncode != 0 and "--yes" in refused.stderr
    fingerprint = first.stdout.split("SHA-256: ")[1].split()[0]
    again = paladin("factory-reset", "--yes")
    assert again.returncode == 0 and fingerprint not in again.stdout and "Setup code: " in again.stdout
