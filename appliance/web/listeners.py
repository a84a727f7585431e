"""What each listener serves: the redirect port only sends browsers to HTTPS; the plain API port and the
HTTPS port serve the app (pages on the plain port send browsers to HTTPS too: `auth.page`).

The listener a request came in on is set by the connection (`server.Protocol`); requests that came
through no listener (the in-process test client) are served as if by HTTPS.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import facts
from ..config import Config

# Where the connection (server.Protocol) names the listener a request came in on.
LISTENER_KEY = "paladin.listener"
HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})$")


def https_url(config: Config, scope: Scope) -> str:
    """This request's URL on the HTTPS listener, under the name the client used (if it is a plain
    host name or address; anything else in Host: the box's mDNS name)."""
    host = Headers(scope=scope).get("host", "")
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    host = host if HOST.match(host) else facts.MDNS_NAME
    _, port = config.listeners().get("https", ("", facts.HTTPS_PORT))
    query = scope.get("query_string", b"").decode("latin-1")
    return f"https://{host}{'' if port == 443 else f':{port}'}{scope['path']}{'?' + query if query else ''}"


def plain(scope: Scope) -> bool:
    """Whether the request came in on a listener without TLS."""
    return scope.get(LISTENER_KEY, "https") != "https"


class RedirectListener:
    """Send the redirect listener's requests to HTTPS (below app.CurrentConfig, which gives each request the
    configuration as it is now)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get(LISTENER_KEY) == "redirect":
            # 308 keeps the method: a client that POSTs here learns the right place and sends nothing twice.
            url = https_url(scope["state"]["config"], scope)
            return await RedirectResponse(url, status_code=308)(scope, receive, send)
        await self.app(scope, receive, send)
