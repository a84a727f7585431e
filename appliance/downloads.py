"""The box's one model download at a time, in a thread of its own so that the event loop never waits on
the network or the disk, and how far it got (the Models page and Ollama's pull read it)."""

from __future__ import annotations

import threading
from pathlib import Path

from . import store
from .errors import Conflict
from .store import StoreError, Tier


class Downloads:
    """The box's one model download at a time, and how far it got (GET /models/download)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the download's thread reports while the event loop reads
        self._status = {"state": "idle", "tier": None, "done": 0, "total": 0, "error": None}

    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def start(self, tier: Tier, models: Path) -> bool:
        """Fetch `tier` into `models` in a thread of its own; False when its file is installed already."""
        with self._lock:
            if self._status["state"] == "downloading":
                raise Conflict(f"'{self._status['tier']}' is downloading ({self._status['done']} of "
                               f"{self._status['total']} bytes); wait until GET /models/download says it is "
                               "done or failed, then start the next one", param="tier")
            if (size := store.installed(models).get(tier.file)) is not None:
                self._status = {"state": "done", "tier": tier.name, "done": size, "total": size, "error": None}
                return False
            self._status = {"state": "downloading", "tier": tier.name, "done": 0, "total": tier.size, "error": None}
        threading.Thread(target=self._run, args=(tier, models), name="download", daemon=True).start()
        return True

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._status.update(done=done, total=total)

    def _run(self, tier: Tier, models: Path) -> None:
        outcome = {"state": "failed", "error": "the download stopped on an unexpected error (the service log "
                                               "says which); start it again to resume"}
        try:
            size = store.download_tier(tier, models, self._progress).stat().st_size
            outcome = {"state": "done", "done": size, "total": size}
        except StoreError as err:
            outcome["error"] = str(err)
        finally:  # whatever happened, the box must not report "downloading" for ever
            with self._lock:
                self._status.update(outcome)
