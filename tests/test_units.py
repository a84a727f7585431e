"""Every shipped unit is sandboxed; checked with systemd's own analyzer."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the image's units, and the one the Pi's initrd gets (buildhost/rpi.py)
UNITS = sorted([*(ROOT / "units").glob("*.service"),
                *(ROOT / "image/mkosi.profiles/rpi/initrd/usr/lib/systemd/system").glob("*.service")])
EXPOSURE_LIMIT = 2.0  # for every unit, the updater (root, CAP_SYS_ADMIN, the disks) included


@pytest.mark.system
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_exposure_is_low(unit):
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit],
                         capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout).group(1))
    assert exposure <= EXPOSURE_LIMIT, out.stdout


@pytest.mark.unit
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_daemons_notify_and_have_a_watchdog(unit):
    text = unit.read_text()
    if "Type=oneshot" not in text:
        assert "Type=notify" in text and re.search(r"^WatchdogSec=\d+", text, re.M)
