"""The assistant's side of the resource governor: report, follow its rung, show it to the owner.

Every 2 s the assistant tells the governor (paladin-governor.service, over its Unix socket) which
models the box has, which one the owner chose or pinned, what it serves and how fast, and gets back the
rung to serve.  A different rung becomes an engine swap, in a task of its own: streams in flight finish
on the old model, new requests wait and then run on the new one, and clients naming the `paladin`
alias never notice.  The owner reads the governor's state in /health, /metrics, `GET /governor`, its
history in `GET /governor/history`, and on the page /manage/governor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import facts, store
from ..config import Config, GovernorConfig, Live
from ..errors import InvalidRequest, NotReady
from ..inference import gguf
from ..inference.engine import Engine, Strength, model_id
from ..inference.llama import ModelError
from .auth import Identity, page, route
from .http import save_settings
from .pages import render

log = logging.getLogger(__name__)
# The governor samples every second on its own; reports every 2 s keep a step within ~2 s of its decision
# at half the cost of an idle box (each exchange is a connection, a report and an answer).
INTERVAL = 2.0
TIMEOUT = 3.0
MAX_REPLY = 4 * 2**20  # a history of 2000 samples and the decisions of a week
RETRY_SECONDS = 300  # a rung that failed to load is not asked for again sooner
SETTINGS = tuple(f.name for f in dataclasses.fields(GovernorConfig))
# PALADIN_GOVERNOR_SOCKET: tests run a governor of their own beside the service.
SOCKET = Path(os.environ.get("PALADIN_GOVERNOR_SOCKET") or facts.GOVERNOR_SOCKET)


async def exchange(socket: Path, message: dict, timeout: float = TIMEOUT) -> dict:
    """One message to the governor and its answer, within `timeout`."""
    async def talk() -> dict:
        reader, writer = await asyncio.open_unix_connection(socket, limit=MAX_REPLY)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await reader.readline())
        finally:
            writer.close()
        if not isinstance(reply, dict) or "error" in reply:
            raise ValueError(f"the governor answered: {reply.get('error') if isinstance(reply, dict) else reply}")
        return reply
    return await asyncio.wait_for(talk(), timeout)


class Governed:
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

    def _models(self, config: Config) -> dict[str, Path]:
        paths = {model_id(Path(name)): config.models_path / name for name in store.installed(config.models_path)}
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

    def report(self, config: Config) -> tuple[dict, dict[str, Path]]:
        paths = self._models(config)
        settings = config.governor
        pinned = bool(settings.pin) and settings.pin in paths
        chosen = settings.pin if pinned else (model_id(self.chosen) if self.chosen else "")
        models = []
        for name, path in sorted(paths.items()):
            facts = self._kv_per_token(path)
            if facts:
                models.append({"id": name, "bytes": facts[0], "kv_bytes_per_token": facts[1]})
        served = self.engine.served
        return {"models": models[:64], "chosen": chosen, "pinned": pinned,
                "threads": self.engine.threads, "context": config.inference.context_tokens,
                "served": served and {"model": served.id, "threads": served.threads,
                                      "context": served.context_tokens},
                "cpu_seconds": time.process_time(),
                "tokens_per_second": round(self.engine.metrics.last_tokens_per_second, 2),
                "settings": dataclasses.asdict(settings)}, paths

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
        message, paths = self.report(self.live.config)
        reply = await exchange(self.socket, {"report": message})
        if self.problem is not None:
            log.info("the resource governor answers")
        if not isinstance(reply.get("status"), dict):
            raise ValueError("the governor's answer has no status")
        self.status, self.problem = reply["status"], None
        rung = reply.get("rung")
        if isinstance(rung, dict):
            self.follow(rung, paths)

    def follow(self, rung: dict, paths: dict[str, Path]) -> None:
        """Swap to `rung` unless it is served, a swap is under way, or it failed to load a short while ago."""
        key = (rung.get("model"), rung.get("threads"), rung.get("context"))
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


def _governed(request: Request) -> Governed:
    return request.state.governed


async def state(request: Request):
    governed = _governed(request)
    return JSONResponse({"connected": governed.status is not None, "problem": governed.problem,
                         **(governed.status or {})})


async def history(request: Request):
    try:
        since = float(request.query_params.get("since", "0"))
    except ValueError:
        raise InvalidRequest("'since' is a time in seconds since the epoch", param="since") from None
    try:
        reply = await exchange(_governed(request).socket, {"history": {"since": since}})
    except (OSError, ValueError, asyncio.TimeoutError) as err:
        raise NotReady(f"the resource governor does not answer: {err}", retry_after=5) from None
    return JSONResponse(reply)


async def settings(request: Request):
    """Change the owner's governor settings: the pin and the limits (0: the board's default)."""
    return await save_settings(request, "governor", SETTINGS)


async def governor_page(request: Request):
    governed = _governed(request)
    return render(request, "governor.html", {"status": governed.status, "problem": governed.problem,
                                             "settings": request.state.config.governor,
                                             "timezone": request.state.config.device.timezone})


OWNER = (Identity.OWNER, Identity.TOKEN)
routes = [
    route("/governor", state, needs=OWNER, methods=["GET"]),
    route("/governor/history", history, needs=OWNER, methods=["GET"]),
    route("/governor/settings", settings, needs=OWNER, methods=["PUT"]),
    page("/manage/governor", governor_page),
]
