"""The box's one model download at a time, in a thread of its own so that the event loop never waits on
the network or the disk, and how far it got (the Models page and Ollama's pull read it): bytes, speed and
time left, and a way to stop it."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

from . import store
from .catalog import Tier
from .errors import Conflict
from .store import Cancelled, StoreError

WINDOW_SECONDS = 10  # the speed is what arrived over this last stretch


def _job(state: str, tier: str | None = None, done: int = 0, total: int = 0) -> dict:
    return {"state": state, "tier": tier, "done": done, "total": total, "error": None, "speed": 0,
            "seconds_left": None}


class Downloads:
    """The box's one model download at a time, and how far it got (GET /models/download)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the download's thread reports while the event loop reads
        self._status = _job("idle")
        self._stop = threading.Event()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def start(self, tier: Tier, models: Path) -> bool:
        """Fetch `tier` into `models` in a thread of its own; False when its file is installed already."""
        with self._lock:
            if self._status["state"] == "downloading":
                raise Conflict(f"'{self._status['tier']}' is downloading ({self._status['done']} of "
                               f"{self._status['total']} bytes); wait until GET /models/download says it is "
                               "done or failed, or stop it, then start the next one", param="tier")
            if (size := store.installed(models).get(tier.file)) is not None:
                self._status = _job("done", tier.name, size, size)
                return False
            self._status = _job("downloading", tier.name, 0, tier.size)
            self._stop, self._recent = threading.Event(), collections.deque()
        threading.Thread(target=self._run, args=(tier, models, self._stop), name="download", daemon=True).start()
        return True

    def stop(self) -> bool:
        """Stop the download that runs (what arrived is kept, to resume); False when none runs."""
        with self._lock:
            if self._status["state"] != "downloading":
                return False
            self._stop.set()
            return True

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, done))
            while len(self._recent) > 2 and now - self._recent[0][0] > WINDOW_SECONDS:
                self._recent.popleft()
            since, before = self._recent[0]
            speed = (done - before) / (now - since) if now > since else 0
            self._status.update(done=done, total=total, speed=int(speed),
                                seconds_left=round((total - done) / speed) if speed > 0 else None)

    def _run(self, tier: Tier, models: Path, stop: threading.Event) -> None:
        outcome = {"state": "failed", "error": "the download stopped on an unexpected error (the service log "
                                               "says which); start it again to resume"}
        try:
            size = store.download_tier(tier, models, self._progress, stop).stat().st_size
            outcome = {"state": "done", "done": size, "total": size}
        except Cancelled as err:
            outcome = {"state": "stopped", "error": str(err)}
        except StoreError as err:
            outcome["error"] = str(err)
        finally:  # whatever happened, the box must not report "downloading" for ever
            with self._lock:
                self._status.update(outcome, speed=0, seconds_left=None)
