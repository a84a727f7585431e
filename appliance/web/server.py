"""`paladin serve`: the app under gunicorn, with exactly one worker holding the model.

One worker because the model is the expensive part: a second worker would load
a second copy.  Concurrency comes from the worker's event loop, and the
engine's queue decides who generates next.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import signal
import socket
import ssl
import sys

import uvicorn

from gunicorn import glogging
from gunicorn.arbiter import Arbiter
from gunicorn.app.base import BaseApplication
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from .. import device, logs, systemd
from ..config import Config
from .listeners import LISTENER_KEY


class Logger(glogging.Logger):
    """gunicorn's own lines (arbiter and worker) with journald priorities, like the service's."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.formatter())


class Protocol(HttpToolsProtocol):
    """One connection, told which listener accepted it (the redirect, the plain API or HTTPS).

    Hang up on a client that has not sent a request's headers `header_seconds` after connecting or
    after starting the request (slowloris: uvicorn would wait for ever); idle keep-alive connections
    are uvicorn's own `timeout_keep_alive`.  A client address holding `per_client` connections already
    (counted in `peers`, shared by the worker's connections) is hung up on at once: below the worker's
    whole bound (`limit_concurrency`), so one device cannot take every slot from the others.
    """

    def __init__(self, *args, header_seconds: float, kinds: dict[int, str], peers: collections.Counter,
                 per_client: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_seconds, self.kinds, self.peers, self.per_client = header_seconds, kinds, peers, per_client
        self.header_timer, self.kind, self.peer = None, "listen", None

    def _arm(self) -> None:
        self._disarm()
        self.header_timer = self.loop.call_later(self.header_seconds, self.transport.close)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.kind = self.kinds.get(self.server[1] if self.server else None, "listen")
        if self.client:
            self.peer = self.client[0]
            self.peers[self.peer] += 1
            if self.peers[self.peer] > self.per_client:
                transport.close()
                return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[LISTENER_KEY] = self.kind
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self.peer is not None:
            self.peers[self.peer] -= 1
            if not self.peers[self.peer]:
                del self.peers[self.peer]  # the counter holds only addresses with connections open
            self.peer = None
        super().connection_lost(exc)


def tls_context(config: Config) -> ssl.SSLContext:
    """The box's own key and certificate (made on its first boot: appliance.device), TLS 1.2 and up."""
    made = device.secrets_of(config.data_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(made.tls_certificate, made.tls_key)
    return context


class Listening(uvicorn.Server):
    """uvicorn's server with TLS on the HTTPS sockets only: uvicorn puts TLS on every socket or on none,
    and the box serves HTTPS, the redirect and the plain API side by side from one worker (one copy of
    the model)."""

    def __init__(self, config: uvicorn.Config, tls_sockets: list[socket.socket], tls: ssl.SSLContext | None,
                 handshake_seconds: float):
        super().__init__(config)
        self.tls_sockets, self.tls, self.handshake_seconds = tls_sockets, tls, handshake_seconds

    def _connection(self, _loop=None) -> Protocol:
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                               app_state=self.lifespan.state, _loop=_loop)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan, then the plain sockets
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        for sock in self.tls_sockets:
            self.servers.append(await loop.create_server(self._connection, sock=sock, ssl=self.tls,
                                                         ssl_handshake_timeout=self.handshake_seconds,
                                                         backlog=self.config.backlog))


class Worker(UvicornWorker):
    """uvicorn with the box's listeners and limits: TLS on the HTTPS port, a deadline for headers, a bound
    on connections, and open streams stopped before gunicorn's SIGKILL (uvicorn would wait for them
    without limit)."""

    # A client is its peer address (docs/security.md): no X-Forwarded-For, not even from loopback, where
    # uvicorn trusts it by default and a guesser's forged header would wear a new address per request.
    # The headers every response carries, uvicorn's own refusals included, are set here once: no
    # content sniffing, and no `server` header naming the software.
    CONFIG_KWARGS = UvicornWorker.CONFIG_KWARGS | {"proxy_headers": False, "server_header": False,
                                                   "headers": [("X-Content-Type-Options", "nosniff")]}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        box = self.app.config  # the box's Config, from Server below
        server = box.server
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 2)
        self.config.http = functools.partial(Protocol, header_seconds=server.header_seconds,
                                             kinds={port: kind for kind, (_, port) in box.listeners().items()},
                                             peers=collections.Counter(), per_client=server.connections_per_client)
        self.config.limit_concurrency = server.max_connections
        self.https_port = box.listeners().get("https", (None, None))[1]
        self.tls = tls_context(box) if self.https_port else None

    async def _serve(self) -> None:
        """uvicorn_worker's, with the HTTPS sockets handed over apart from the others."""
        self.config.app = self.wsgi
        tls = [s for s in self.sockets if s.getsockname()[1] == self.https_port]
        server = Listening(self.config, tls, self.tls, self.app.config.server.header_seconds)
        self._install_sigquit_handler()
        await server.serve(sockets=[s for s in self.sockets if s not in tls])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class Server(BaseApplication):
    def __init__(self, config: Config, model_path=None):
        self.config, self.model_path = config, model_path
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                     for host, port in self.config.listeners().values()],
            "workers": 1,
            "worker_class": "appliance.web.server.Worker",
            "graceful_timeout": self.config.server.graceful_timeout,
            "timeout": 60,
            "keepalive": 5,
            "accesslog": None,  # privacy: the box keeps no log of who asked what
            "errorlog": "-",
            "logger_class": "appliance.web.server.Logger",
            "proc_name": "paladin",
            "control_socket_disable": True,  # gunicorn's runtime control socket: not needed, not wanted
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app  # in the worker only: the arbiter never maps llama.cpp or numpy

        # A confirmed restore stops the arbiter (gunicorn's SIGTERM: a graceful stop); `paladin serve` then
        # starts again from the top and puts the restore in place before anything opens the data.
        return create_app(self.config, self.model_path, restart=lambda: os.kill(os.getppid(), signal.SIGTERM))


def serve(config: Config, model_path=None) -> None:
    systemd.hide_from_gunicorn()
    Server(config, model_path).run()
