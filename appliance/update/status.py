"""What the updater leaves for everyone to read: the running version and its state files.

Privilege-free: the web worker imports this (and nothing else of `appliance.update`) for its status
page.  The root side writes the files with `appliance.files.write`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import facts

STATE = Path(os.environ.get("PALADIN_UPDATE_STATE", str(facts.UPDATE_STATE)))
OS_RELEASE = Path("/usr/lib/os-release")


def os_release(path: Path = OS_RELEASE) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip().strip('"')
    return fields


def running_version() -> str:
    return os_release().get("IMAGE_VERSION", "0")


def read_state(path: Path, default):
    """A JSON state file, or `default` when it is missing or half-written by an older crash."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def progress(state: Path = STATE) -> dict:
    """The current or last update attempt (status.json)."""
    return read_state(state / "status.json", {"phase": "idle"})


def snapshot(state: Path = STATE) -> dict:
    """Slots, boot entries and attempts as the updater last saw them (it alone may read the disks)."""
    return read_state(state / "snapshot.json", {})
