"""The assistant's side of the resource governor: report, and follow its rung.

Every 2 s the assistant tells the governor (paladin-governor.service, over its Unix socket) which
models the box has, which one the owner chose or pinned, what it serves and how fast, and gets back the
rung to serve.  A different rung becomes an engine swap, in a task of its own: streams in flight finish
on the old model, new requests wait and then run on the new one, and clients naming the `paladin`
alias never notice.  The web worker shows what it holds (web/governed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from .. import store
from ..config import Config, Live
from ..errors import ModelError
from ..inference import gguf
from ..inference.engine import Engine
from ..inference.served import Strength, model_id
from .protocol import MAX_MODELS, MAX_REPLY, Answer, HistoryQuery, Model, Report, Rung, encode, read_reply

log = logging.getLogger(__name__)
# The governor samples every second on its own; reports every 2 s keep a step within ~2 s of its decision
# at half the cost of an idle box (each exchange is a connection, a report and an answer).
INTERVAL = 2.0
TIMEOUT = 3.0
RETRY_SECONDS = 300  # a rung that failed to load is not asked for again sooner


async def exchange(socket: Path, message: Report | HistoryQuery, timeout: float = TIMEOUT) -> dict:
    """One message to the governor and its answer, within `timeout`."""
    async def talk() -> dict:
        reader, writer = await asyncio.open_unix_connection(socket, limit=MAX_REPLY)
        try:
            writer.write(encode(message))
            await writer.drain()
            return read_reply(await reader.readline())
        finally:
            writer.close()
    return await asyncio.wait_for(talk(), timeout)


class Governed:
    """The governor's last status (or why there is none) and the swap that follows its rung."""

    def __init__(self, socket: Path, engine: Engine, live: Live, chosen: Path | None):
        self.socket, self.engine, self.live, self.chosen = Path(socket), engine, live, chosen
        self.status: dict | None = None
        self.problem: str | None = "not asked yet"
        self.swap: asyncio.Task | None = None
        self.failed: dict[tuple, float] = {}
        self._kv: dict[Path, tuple[int, int, int]] = {}  # path -> (size, mtime, KV bytes per token)

    def choose(self, path: Path) -> None:
        """The owner chose `path` (the Models page): the ladder's top from now on."""
        self.chosen = path

    async def settle(self, timeout: float) -> None:
        """Wait up to `timeout` s for a swap under way (the model is unloaded while the next rung loads);
        how it ends is the engine's to say."""
        if self.swap is not None and not self.swap.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.swap), timeout)

    def _models(self, config: Config) -> dict[str, Path]:
        paths = {model_id(Path(name)): config.data.models / name for name in store.installed(config.data.models)}
        if self.chosen is not None:
            paths[model_id(self.chosen)] = self.chosen
        return paths

    def _kv_per_token(self, path: Path) -> tuple[int, int] | None:
        """File size and KV bytes per token, read once per file version; None for a file that is not usable."""
        try:
            stat = path.stat()
            size, mtime, kv = self._kv.get(path, (-1, -1, 0))
            if (size, mtime) != (stat.st_size, stat.st_mtime_ns):  # one entry per path: a replaced file replaces it
                kv = gguf.kv_bytes_per_token(path)
                self._kv[path] = (stat.st_size, stat.st_mtime_ns, kv)
            return stat.st_size, kv
        except (OSError, gguf.HeaderError) as err:
            log.warning("left off the ladder: %s", err)
            return None

    def report(self, config: Config) -> tuple[Report, dict[str, Path]]:
        paths = self._models(config)
        settings = config.governor
        pinned = bool(settings.pin) and settings.pin in paths
        chosen = settings.pin if pinned else (model_id(self.chosen) if self.chosen else "")
        models = []
        for name, path in sorted(paths.items()):
            if sizes := self._kv_per_token(path):
                models.append(Model(name, *sizes))
        served = self.engine.served
        return Report(models=tuple(models[:MAX_MODELS]), chosen=chosen, pinned=pinned, threads=self.engine.threads,
                      context=config.inference.context_tokens,
                      served=served and (served.id, served.threads, served.context_tokens),
                      cpu_seconds=time.process_time(),
                      tokens_per_second=round(self.engine.metrics.last_tokens_per_second, 2),
                      settings=tuple(sorted(dataclasses.asdict(settings).items()))), paths

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.once()
            except Exception as err:  # whatever the governor does, the assistant serves on and asks again
                if self.problem is None:
                    log.warning("the resource governor does not answer: %s", err)
                self.status, self.problem = None, str(err) or type(err).__name__
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    async def once(self) -> None:
        report, paths = self.report(self.live.config)
        answer = Answer.read(await exchange(self.socket, report))
        if self.problem is not None:
            log.info("the resource governor answers")
        self.status, self.problem = answer.status, None
        if answer.rung is not None:
            self.follow(answer.rung, paths)

    def follow(self, rung: Rung, paths: dict[str, Path]) -> None:
        """Swap to `rung` unless it is served, a swap is under way, or it failed to load a short while ago."""
        key = rung.key()
        served = self.engine.served
        if served is not None and key == (served.id, served.threads, served.context_tokens):
            return
        if (self.swap is not None and not self.swap.done()) or self.engine.swapping or key[0] not in paths:
            return
        if time.monotonic() - self.failed.get(key, -RETRY_SECONDS) < RETRY_SECONDS:
            return
        self.swap = asyncio.create_task(self._swap(key, paths[key[0]]))

    async def _swap(self, key: tuple, path: Path) -> None:
        log.info("the resource governor asks for %s with %s threads and a %s-token context", *key)
        try:
            await self.engine.swap(path, Strength(key[1], key[2]))
        except ModelError as err:
            self.failed[key] = time.monotonic()
            log.error("the governor's rung %s could not be loaded (not asked for again for %d s): %s",
                      key, RETRY_SECONDS, err)

    def health(self) -> dict:
        if self.status is None:
            return {"connected": False, "problem": self.problem}
        status = self.status
        return {"connected": True, "enabled": status.get("enabled"), "pinned": status.get("pinned"),
                "rung": status.get("rung"), "index": status.get("index"), "rungs": len(status.get("ladder") or []),
                "warnings": status.get("warnings"), "decisions": (status.get("decisions") or [])[-3:]}

    def metrics(self) -> dict[str, float]:
        status = self.status or {}
        sample = status.get("sample") or {}
        values = {"governor_connected": float(self.status is not None),
                  "governor_rung": status.get("index"), "governor_rungs": len(status.get("ladder") or []),
                  "governor_temperature_celsius": sample.get("temperature"),
                  "governor_other_cpu_percent": sample.get("other_cpu"),
                  "governor_memory_available_bytes": sample.get("memory_available"),
                  "governor_warnings": len(status.get("warnings") or [])}
        for decision in status.get("decisions") or []:
            values[f'governor_last_decision_timestamp_seconds{{action="{decision["action"]}"}}'] = decision["t"]
        return {name: float(value) for name, value in values.items() if value is not None}


