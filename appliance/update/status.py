"""What the updater leaves for everyone to read: the running version and its state files.

Privilege-free: the web worker imports this (and nothing else of `appliance.update`) for its status
page.  The root side writes the files with `appliance.files.write`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..layout import DataDir, UpdateState

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


FETCH_PHASES = ("metadata", "unpack", "download")


def progress(state: UpdateState = UpdateState(), data_dir: Path | None = None) -> dict:
    """The current or last update attempt (status.json); while the fetcher runs, with its phase and
    byte counts (the worker shows them to the owner; nothing privileged reads them)."""
    current = read_state(state.status, {"phase": "idle"})
    if current.get("phase") == "fetch" and data_dir is not None:
        fetcher = read_state(DataDir(Path(data_dir)).update.status, {})
        # Only its working phases: how the attempt ends (and why) is root's to say.
        if isinstance(fetcher, dict) and fetcher.get("phase") in FETCH_PHASES and \
                fetcher.get("time", 0) >= current.get("time", 0):
            current |= {key: fetcher[key] for key in ("phase", "done", "total", "version") if key in fetcher}
    return current


def snapshot(state: UpdateState = UpdateState()) -> dict:
    """Slots, boot entries and attempts as the updater last saw them (it alone may read the disks)."""
    return read_state(state.snapshot, {})
