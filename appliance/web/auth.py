"""Who is calling, and what each route requires.

The middleware only identifies the caller, it never refuses: an API token as `Authorization:
Bearer` or as the password of HTTP Basic (some clients take only a URL: Home Assistant's Ollama
integration works with `https://any-name:TOKEN@paladin.local`).  Each route declares the identity it
needs with `route(..., needs=...)`; the guard refuses everyone else.  tests/web/test_routes.py lists
every route with its identity, so a new route cannot be public by accident.

Identities: PUBLIC (anyone on the network) and TOKEN (a live API token).  The first-boot wizard adds
the owner's browser session and the one-time setup code as further members of `Identity`.

Guessing: every wrong token takes one from its client's bucket of failures (`ratelimit.Buckets`); while
the bucket is empty, the client's tokens are not even checked, and routes that need one answer 429
instead of 401, so a right token found by guessing is worth nothing until the bucket refills.
"""

from __future__ import annotations

import base64
import enum
from typing import TYPE_CHECKING, Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import tokens
from ..errors import TooManyRequests, Unauthenticated
from .http import client_of

if TYPE_CHECKING:  # ratelimit labels its refusals with ROUTE_KEY, from here
    from .ratelimit import Buckets


# Where a route leaves its template in the ASGI scope, for labels from a closed set (metrics).
ROUTE_KEY = "paladin.route"


class Identity(enum.Enum):
    PUBLIC = "public"
    TOKEN = "API token"


def presented_token(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip() or None
    if scheme == "basic":
        try:
            _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 once decoded
            return None
        return password or None
    return None


class Identify:
    """Put the caller's proven identities (and the token's name) into the request state, and the seconds
    its tokens go unchecked after too many wrong ones (`locked_out`, 0 for everyone else)."""

    def __init__(self, app: ASGIApp, db, failures: Buckets):
        self.app, self.db, self.failures = app, db, failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            token = presented_token(Headers(scope=scope))
            name, locked_out, client = None, 0, client_of(scope)
            if token and not (locked_out := self.failures.wait(client)):
                name = tokens.verify(self.db, token)
                if name is None:
                    self.failures.take(client)
            state["identities"] = {Identity.PUBLIC} | ({Identity.TOKEN} if name else set())
            state["token_name"] = name
            state["locked_out"] = locked_out
        await self.app(scope, receive, send)


Endpoint = Callable[[Request], Awaitable[Response]]


def route(path: str, endpoint: Endpoint, *, needs: Identity, methods: list[str] | None = None) -> Route:
    """A route whose endpoint runs only for a caller proven to be `needs`."""

    async def guarded(request: Request) -> Response:
        request.scope[ROUTE_KEY] = path
        if needs not in request.state.identities:
            if seconds := request.state.locked_out:
                raise TooManyRequests(f"too many wrong tokens from this address: its tokens are not checked for "
                                      f"{seconds} s (Retry-After); then send a live one ('paladin token list' "
                                      "names them)", retry_after=seconds)
            raise Unauthenticated(f"this needs a valid {needs.value} (Authorization: Bearer TOKEN, or HTTP Basic "
                                  "with the token as password); create one with 'paladin token create'")
        return await endpoint(request)

    made = Route(path, guarded, methods=methods, name=endpoint.__name__)
    made.needs = needs  # read by the route table (docs/api.md and its test)
    return made


def public_files(path: str, directory) -> Mount:
    """Static files anyone may fetch: the web UI's scripts and styles, nothing of the owner's."""
    files = StaticFiles(directory=directory)

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_KEY] = path
        await files(scope, receive, send)

    made = Mount(path, app=serve, name="static")
    made.needs = Identity.PUBLIC
    return made
