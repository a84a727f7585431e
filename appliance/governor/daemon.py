"""paladin-governor: sample, decide, remember, and answer the assistant on a local socket.

The governor is its own unprivileged daemon with no network: it reads sensors and keeps its history,
nothing else.  The assistant connects to its Unix socket every 2 s with a report (the models on
the box, the owner's choice and limits, the rung it serves, its CPU time and speed) and gets back the
rung it should serve; the assistant then swaps through its engine, which lets streams in flight
finish and holds new requests until the new model serves.  A governor that is down, slow or confused
therefore never stops the assistant: it keeps serving what it serves.

Only the assistant's user (and root) may talk to the socket (SO_PEERCRED); every message is one line
of JSON of bounded size, checked field by field (protocol.py), and every read has a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pwd
import socket
import struct
import time
from pathlib import Path

from .. import config as config_module, systemd
from ..config import ConfigError, GovernorConfig
from ..layout import GovernorState
from .history import History
from .policy import Limits, Policy, label, ladder
from .protocol import MAX_LINE, Answer, HistoryQuery, MessageError, Report, encode, read_request
from .sensors import Sensors

log = logging.getLogger(__name__)
READ_SECONDS = 5
FLUSH_SECONDS = 60


def settings_of(report: Report) -> GovernorConfig:
    """The owner's governor settings a report carries, checked as configuration."""
    return _checked(report.settings)


@functools.lru_cache(maxsize=4)
def _checked(items: tuple) -> GovernorConfig:
    """The same settings every second are checked once."""
    try:
        return config_module.parse({"governor": dict(items)}, "report.settings").governor
    except ConfigError as err:
        raise MessageError(str(err)) from None


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


class Governor:
    def __init__(self, state: GovernorState, sensors: Sensors, interval: float = 1.0):
        self.history = History(state.history)
        self.sensors, self.interval = sensors, interval
        self.policy = Policy()
        self.report: Report | None = None
        self.reported_at = 0.0
        # The assistant's CPU use as a rate (CPU seconds per second) between its last two reports: it reports
        # less often than the governor samples, and each sample must carry its own share, not a lump.
        self.cpu_seconds: float | None = None
        self.assistant_rate = 0.0
        self.latest: dict | None = None
        self.warnings: set[str] = set()

    # -- the assistant's side ---------------------------------------------

    def take_report(self, report: Report) -> Answer:
        settings = settings_of(report)
        now = time.monotonic()
        if self.cpu_seconds is not None and report.cpu_seconds >= self.cpu_seconds and now > self.reported_at:
            self.assistant_rate = (report.cpu_seconds - self.cpu_seconds) / (now - self.reported_at)
        self.cpu_seconds = report.cpu_seconds
        self.report, self.reported_at = report, now
        self.policy.set_ladder(ladder(report.models, report.chosen, report.threads, report.context), report.served)
        if not settings.enabled or report.pinned:
            self.policy.index = 0  # the owner's model (or the pinned one) at full strength
        return Answer(self.policy.wanted, self.status())

    def _settings(self) -> GovernorConfig:
        return settings_of(self.report) if self.report else GovernorConfig()

    def status(self) -> dict:
        latest = self.latest or {}
        served = self.report and self.report.served
        return {"enabled": self._settings().enabled, "pinned": bool(self.report and self.report.pinned),
                "rung": self.policy.wanted.as_dict() if self.policy.wanted else None,
                "index": self.policy.index, "ladder": [r.as_dict() for r in self.policy.rungs],
                "served": served and dict(zip(("model", "threads", "context"), served)),
                "limits": self._limits(latest).__dict__ if latest else None, "sample": self.latest,
                "warnings": sorted(self.warnings), "decisions": list(self.history.recent)}

    def _limits(self, sample: dict) -> Limits:
        return Limits.for_board(self._settings(), sample["memory_total"], sample["cores"], self.sensors.board)

    # -- sampling ---------------------------------------------------------

    def step(self) -> None:
        """One sample, and the decision it brings, if any."""
        sample = self.sensors.sample(time.time(), self.assistant_rate * self.interval, self.interval)
        fresh = self.report is not None and time.monotonic() - self.reported_at < 5 * max(self.interval, 1)
        report = self.report if fresh else None
        record = sample.as_dict() | {
            "tokens_per_second": report.tokens_per_second if report else None,
            "rung": self.policy.index if report and self.policy.rungs else None,
            "model": label(self.policy.wanted) if report else None}
        self.latest = record
        self.history.add_sample(record)
        for warning in set(sample.warnings) - self.warnings:
            log.warning("%s", warning)
        self.warnings = set(sample.warnings)
        settings = self._settings()
        if report is None or not settings.enabled or not self.policy.rungs:
            return  # nothing to govern: the samples are still worth keeping
        decision = self.policy.decide(sample, self._limits(record), report.pinned, report.served)
        if decision is not None:
            log.warning("%s: %s -> %s: %s", decision.action, decision.source, decision.target, decision.reason)
            self.history.add_decision(decision.as_dict())

    def history_reply(self, since: float) -> dict:
        return {"samples": [s for s in self.history.samples if s["t"] >= since],
                "decisions": self.history.decisions(since)}

    # -- the daemon -------------------------------------------------------

    def answer(self, line: bytes) -> Answer | dict:
        message = read_request(line)
        if isinstance(message, HistoryQuery):
            return self.history_reply(message.since)
        return self.take_report(message)

    async def serve(self, path: Path, allowed: set[int]) -> None:
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if peer_uid(writer) not in allowed:
                    writer.write(encode({"error": "not allowed"}))
                    return
                while line := await asyncio.wait_for(reader.readline(), READ_SECONDS):
                    try:
                        reply = self.answer(line)
                    except ValueError as err:  # MessageError, or broken JSON
                        reply = {"error": str(err)[:200]}
                    except RecursionError:  # the parser's own bound on nesting, far past any report's
                        reply = {"error": "the message is nested too deeply"}
                    writer.write(encode(reply))
                    await asyncio.wait_for(writer.drain(), READ_SECONDS)
            except (asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError, ConnectionError):
                pass  # a slow, silent or oversized client loses its connection, nothing else
            finally:
                writer.close()

        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(client, path, limit=MAX_LINE)
        os.chmod(path, 0o666)  # who may talk is SO_PEERCRED's to say, not the file mode's
        async with server:
            systemd.notify("READY=1", f"STATUS=sampling every {self.interval:g} s")
            flushed = time.monotonic()
            while True:
                started = time.monotonic()
                self.step()
                systemd.notify("WATCHDOG=1")
                if started - flushed >= FLUSH_SECONDS:
                    self.history.flush()
                    flushed = started
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


def allowed_uids(users: list[str]) -> set[int]:
    return {0, os.getuid(), *(pwd.getpwnam(user).pw_uid for user in users)}
