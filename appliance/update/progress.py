"""An update attempt's progress (the updater's status.json, or the fetcher's in its work directory),
written durably and readable by the web worker (appliance.update.status reads them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import files
from .status import running_version


class UpdateError(RuntimeError):
    """An update was refused or failed; the message says which check and why. No slot in use was touched."""


def write_json(path: Path, data) -> None:
    files.write(path, json.dumps(data, indent=1).encode(), mode=0o644)


class Progress:
    """The current update's phase, byte counts and seconds per phase in status.json; byte counts are
    written at most twice a second."""

    def __init__(self, path: Path, **fields):
        self.path = path
        self.fields = {"phase": "starting", "running": running_version(), "error": None, "seconds": {}} | fields
        self.last = self.phase_started = time.monotonic()
        self.set()

    def set(self, **fields) -> None:
        now = time.monotonic()
        if fields.get("phase", self.fields["phase"]) != self.fields["phase"]:
            spent = self.fields["seconds"].get(self.fields["phase"], 0) + now - self.phase_started
            self.fields["seconds"][self.fields["phase"]] = round(spent, 2)
            self.phase_started = now
        self.fields.update(fields, time=time.time())
        write_json(self.path, self.fields)
        self.last = now

    def add(self, received: int) -> None:
        self.fields["done"] = self.fields.get("done", 0) + received
        if time.monotonic() - self.last > 0.5:
            self.set()
