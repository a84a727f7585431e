"""`paladin serve`: the app under gunicorn, with exactly one worker holding the model.

One worker because the model is the expensive part: a second worker would load
a second copy.  Concurrency comes from the worker's event loop, and the
engine's queue decides who generates next.
"""

from __future__ import annotations

import functools

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from .. import logs, systemd
from ..config import Config


class Logger(glogging.Logger):
    """gunicorn's own lines (arbiter and worker) with journald priorities, like the service's."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.formatter())


class Protocol(HttpToolsProtocol):
    """Hang up on a client that has not sent a request's headers `header_seconds` after connecting or
    after starting the request (slowloris: uvicorn would wait for ever); idle keep-alive connections
    are uvicorn's own `timeout_keep_alive`."""

    def __init__(self, *args, header_seconds: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_seconds, self.header_timer = header_seconds, None

    def _arm(self) -> None:
        self._disarm()
        self.header_timer = self.loop.call_later(self.header_seconds, self.transport.close)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


class Worker(UvicornWorker):
    """uvicorn with the box's limits: a deadline for headers, a bound on connections, and open streams
    stopped before gunicorn's SIGKILL (uvicorn would wait for them without limit)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        server = self.app.config.server  # the box's Config, from Server below
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 2)
        self.config.http = functools.partial(Protocol, header_seconds=server.header_seconds)
        self.config.limit_concurrency = server.max_connections


class Server(BaseApplication):
    def __init__(self, config: Config, model_path=None):
        self.config, self.model_path = config, model_path
        super().__init__()

    def load_config(self) -> None:
        host, port = self.config.listen_address()
        settings = {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
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

        return create_app(self.config, self.model_path)


def serve(config: Config, model_path=None) -> None:
    systemd.hide_from_gunicorn()
    Server(config, model_path).run()
