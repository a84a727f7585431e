"""The assistant's ASGI application, assembled explicitly from the API modules."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import catalog, config as config_module, db as database, device, speed, systemd
from ..backup import contents
from ..config import Config
from ..downloads import Downloads
from ..errors import MethodNotAllowed, ModelError, NotFound, ServiceError
from ..governor import client as governor_client
from ..inference.engine import Engine
from ..inference.generation import Finished, Request as Generation
from ..inference.probe import Proofs
from ..metrics import Metrics
from ..update import status as update_status
from . import (access, account, backups, chat, governed as governor, models, ollama_api, openai_api, setup, system,
               updates)
from .auth import ROUTE_KEY, Identify, Identity, route
from .http import BodyLimit, openai_error, peer_address
from .listeners import RedirectListener
from .ratelimit import Buckets, RateLimit

log = logging.getLogger(__name__)
# What the worker proved before it loaded a model (inference/probe.py), in the data directory.
# The release this software belongs to (IMAGE_VERSION of the image; "0" outside one).
VERSION = update_status.running_version()


def error_response(path: str, err: ServiceError):
    """Each API's own error shape: Ollama's under /api/, OpenAI's (which the web UI uses too) elsewhere."""
    return ollama_api.error_response(err) if path.startswith("/api/") else openai_error(err)


async def handle_service_error(request: Request, err: ServiceError):
    return error_response(request.url.path, err)


async def handle_no_route(request: Request, err: HTTPException):
    """Starlette's own 404 and 405 in the API's error shape, so clients read them as they read the rest."""
    path = request.url.path[:100]
    if err.status_code == 405:
        response = error_response(path, MethodNotAllowed(f"{path} does not take {request.method[:10]}; it takes "
                                                         f"{(err.headers or {}).get('Allow', 'other methods')}"))
        response.headers.update(err.headers or {})
        return response
    return error_response(path, NotFound(f"there is no {path} on this box; docs/api.md lists what there is"))


def from_the_box(host: str | None) -> bool:
    """A loopback peer, also as IPv6 sees IPv4 on a dual-stack socket (::ffff:127.0.0.1)."""
    address = peer_address(host)
    return address is not None and address.is_loopback


async def probe(engine: Engine) -> dict:
    """One generated token through the real queue: what the boot assessment asks of a new version."""
    started = time.monotonic()
    _, events = await engine.begin(Generation(prompt="ping", max_tokens=1, ignore_eos=True))
    async for event in events:
        if isinstance(event, Finished):
            ok = event.completion_tokens == 1
            return {"probe": "ok" if ok else "failed", "tokens": event.completion_tokens,
                    "seconds": round(time.monotonic() - started, 3)}
    return {"probe": "failed", "tokens": 0}


async def health(request: Request):
    engine: Engine = request.state.engine
    status = engine.status()
    if request.query_params.get("probe"):
        # Inference on an unauthenticated route: only for the box itself (the boot assessment).
        if request.client is None or not from_the_box(request.client.host):
            return JSONResponse({"error": "the inference probe is only served to the box itself"}, status_code=403)
        if engine.state != "ready":
            return JSONResponse({"probe": "failed", "reason": engine.reason}, status_code=503)
        return JSONResponse(await probe(engine))
    # What the box's neighbours watch besides the model: the governor, and backups that stopped succeeding.
    watched = {"governor": request.state.governed.health(), "backup": contents.health(request.state.config.data)}
    if engine.state == "ready":
        return JSONResponse({"status": "ok", "model": status["model"], "tier": request.state.catalog.tier_of(status["path"]),
                             "threads": status["threads"], "context_tokens": status["context_tokens"],
                             "cpu_variant": proofs.current().get("variant") if (proofs := request.state.proofs) else None,
                             "version": VERSION, **watched})
    if engine.state == "no_model":  # deliberately up without a model: healthy, waiting for the owner
        return JSONResponse({"status": "no_model", "model": None, "reason": engine.reason, "version": VERSION,
                             **watched})
    return JSONResponse({"status": engine.state, "reason": engine.reason, **watched}, status_code=503)


async def metrics_page(request: Request):
    return PlainTextResponse(request.state.metrics.render(request.state.governed.metrics()), media_type="text/plain; version=0.0.4")


class CountRequests:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def counting_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            # The matched route's template (auth.ROUTE_KEY): a closed set of labels, whatever paths a
            # client makes up; everything that reached no route counts under one label.
            self.metrics.request(scope.get(ROUTE_KEY, "unmatched"), status)


class CurrentConfig:
    """Give every request the configuration as it is now (`request.state.config`: the owner's changes since
    the start included)."""

    def __init__(self, app: ASGIApp, live: config_module.Live):
        self.app, self.live = app, live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["config"] = self.live.config
        await self.app(scope, receive, send)


def routes() -> list:
    return [route("/health", health, needs=Identity.PUBLIC, methods=["GET"]),
            route("/metrics", metrics_page, needs=Identity.TOKEN, methods=["GET"]),
            *openai_api.routes, *ollama_api.routes, *chat.routes, *models.routes, *updates.routes,
            *setup.routes, *account.routes, *access.routes, *system.routes, *governor.routes, *backups.routes]


def create_app(config: Config, model_path=None, *, prove: bool = True,
               restart: Callable[[], None] | None = None) -> Starlette:
    """The app for `config`, serving the model at `model_path`, loaded at start (None: no model yet).
    `prove`: each model file, and the CPU variant, is first proven in a child (inference/probe.py); only
    in-process tests, which start no process, turn it off.  `restart`: how the worker has the whole service
    start again (a confirmed restore is put in place at its start; in-process tests have none)."""
    db = database.connect(config.data.database)
    metrics = Metrics()
    live = config_module.Live(config)
    server = config.server
    # Wrong tokens, passwords and setup codes all count against their client's one bucket.
    failures = Buckets(server.auth_failures_per_minute / 60, server.auth_failures_per_minute)
    session_key = device.ensure(config.data_path).session_key()
    proofs = Proofs(config.data.proofs) if prove else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        engine = Engine(config.inference, metrics, proofs)
        interval = systemd.watchdog_interval()
        heartbeat = asyncio.create_task(systemd.heartbeat(interval)) if interval else None
        if model_path is not None:
            systemd.notify(f"STATUS=loading {model_path.name}")
            try:
                await engine.swap(model_path)
            except ModelError as err:
                log.error("serving without a model: %s", err)
        systemd.notify("READY=1", f"STATUS={engine.reason}")
        log.info("ready: %s", engine.reason)
        governed = governor_client.Governed(Path(config.paths.governor_socket), engine, live, model_path)
        following = asyncio.create_task(governed.run())
        try:
            yield {"engine": engine, "db": db, "metrics": metrics, "config": config, "downloads": Downloads(),
                   "catalog": catalog.of(config), "speeds": speed.Table.read(),
                   "live": live, "failures": failures, "session_key": session_key, "governed": governed,
                   "proofs": proofs, "restart": restart, "turns": chat.Turns(),
                   "backing_up": asyncio.Lock()}  # one backup or restore at a time (web/backups.py)
        finally:
            systemd.notify("STOPPING=1", "STATUS=shutting down")
            following.cancel()
            if heartbeat:
                heartbeat.cancel()
            await engine.close()

    return Starlette(
        routes=routes(),
        middleware=[
            Middleware(CountRequests, metrics=metrics),
            Middleware(CurrentConfig, live=live),
            Middleware(RedirectListener),
            Middleware(RateLimit, buckets=Buckets(server.requests_per_second, server.request_burst),
                       error=error_response),
            Middleware(BodyLimit, limit=server.max_body_bytes, seconds=server.header_seconds,
                       error=error_response,
                       streamed=(updates.BUNDLE_PATH, models.UPLOAD_PATH, backups.RESTORE_PATH)),
            Middleware(Identify, db=db, failures=failures, session_seconds=server.session_hours * 3600),
        ],
        exception_handlers={ServiceError: handle_service_error, 404: handle_no_route, 405: handle_no_route},
        lifespan=lifespan,
    )
