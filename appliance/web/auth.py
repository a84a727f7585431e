"""Who is calling, and what each route requires.

The middleware only identifies the caller, it never refuses.  Identities:
- PUBLIC: anyone on the network.
- TOKEN: a live API token, as `Authorization: Bearer` or as the password of HTTP Basic (some clients take
  only a URL: `https://any-name:TOKEN@paladin.local`).
- OWNER: a browser logged in with the owner's password (a session cookie, `appliance.sessions`).
- SETUP: a browser that typed the one-time setup code, while the setup wizard is not finished.

Each route declares what it accepts with `route(..., needs=...)`; the guard refuses everyone else.
tests/web/test_routes.py lists every route with its identities, so a new route cannot be public by
accident.  Cookies count only over HTTPS, and a state-changing request that a cookie alone
authorises must carry the session's CSRF token (header `X-CSRF-Token`, or the form field `csrf`).
Browser routes (pages, and forms) are served over HTTPS only: over plain HTTP they redirect there.

Ambient identities: a browser attaches cookies and HTTP Basic credentials by itself, even to a request another
site makes it send.  A state-changing request proven only by one of them is refused when the browser says it
came from another origin (`Sec-Fetch-Site`, or an `Origin` that is not the box's), and its JSON body must say
it is JSON (an HTML form cannot send `application/json`).  Only a Bearer token, which a caller sets on purpose,
is free of both.  401s offer Bearer alone, so a browser never prompts for Basic credentials and keeps them.

Guessing: every token, password or setup code is charged one from its client's bucket of failures
(`ratelimit.Buckets`) before it is checked, and the charge is given back when it is right, so guesses
checked at once (a password hash takes a tenth of a second) cannot outrun the budget; while the bucket
is empty, the client's tokens are not even checked, and routes that need one answer 429 instead of 401,
so a right token found by guessing is worth nothing until the bucket refills.
"""

from __future__ import annotations

import base64
import enum
import urllib.parse
from typing import TYPE_CHECKING, Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import owner, sessions, tokens
from ..errors import Forbidden, TooManyRequests, Unauthenticated
from .http import client_of, read_form
from .listeners import https_url, plain

if TYPE_CHECKING:  # ratelimit labels its refusals with ROUTE_KEY, from here
    from .ratelimit import Buckets


# Where a route leaves its template in the ASGI scope, for labels from a closed set (metrics).
ROUTE_KEY = "paladin.route"


class Identity(enum.Enum):
    PUBLIC = "public"
    TOKEN = "API token"
    OWNER = "owner's login"
    SETUP = "setup code"


COOKIE_IDENTITIES = frozenset({Identity.OWNER, Identity.SETUP})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def presented_token(headers: Headers) -> str | None:
    return presented(headers)[1]


def presented(headers: Headers) -> tuple[str, str | None]:
    """The Authorization header's scheme (lower case) and the token it carries (None: none readable)."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return scheme, credentials.strip() or None
    if scheme == "basic":
        try:
            _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 once decoded
            return scheme, None
        return scheme, password or None
    return scheme, None


def from_another_origin(scope: Scope) -> bool:
    """Whether the browser says this request was made by a page of another origin (a missing header, as from
    curl or an app, says nothing)."""
    headers = Headers(scope=scope)
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    return origin is not None and origin != f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"


class Identify:
    """Put the caller's proven identities (and the token's name, and the browser session) into the request
    state, and the seconds its tokens go unchecked after too many wrong ones (`locked_out`, 0 for
    everyone else)."""

    def __init__(self, app: ASGIApp, db, failures: Buckets, session_seconds: float):
        self.app, self.db, self.failures, self.session_seconds = app, db, failures, session_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            headers = Headers(scope=scope)
            scheme, token = presented(headers)
            name, locked_out, client = None, 0, client_of(scope)
            if token and not (locked_out := self.failures.take(client)):
                name = tokens.verify(self.db, token)
                if name is not None:
                    self.failures.refund(client)
            identities = {Identity.PUBLIC} | ({Identity.TOKEN} if name else set())
            session = None if plain(scope) else cookie_parser(headers.get("cookie", "")).get(sessions.COOKIE)
            kind = sessions.find(self.db, session, self.session_seconds) if session else None
            if kind == "owner":
                identities.add(Identity.OWNER)
            elif kind == "setup" and not owner.finished(self.db):
                identities.add(Identity.SETUP)
            state["identities"] = identities
            state["token_name"] = name
            # Proven by what a browser attaches by itself (a cookie, or Basic): see the module's docstring.
            state["ambient"] = scheme != "bearer" or name is None
            state["session"] = session if kind else None
            state["locked_out"] = locked_out
        await self.app(scope, receive, send)


Endpoint = Callable[[Request], Awaitable[Response]]


def _needed(needs: Identity | tuple[Identity, ...]) -> frozenset[Identity]:
    return frozenset(needs if isinstance(needs, tuple) else (needs,))


def _refusal(request: Request, needs: frozenset[Identity]) -> Exception:
    if Identity.TOKEN in needs and (seconds := request.state.locked_out):
        return TooManyRequests(f"too many wrong tokens from this address: its tokens are not checked for "
                               f"{seconds} s (Retry-After); then send a live one (the owner's Tokens page "
                               "lists them)", retry_after=seconds)
    ways = []
    if Identity.TOKEN in needs:
        ways.append("an API token (Authorization: Bearer TOKEN, or HTTP Basic with the token as password; the "
                    "owner makes one on the Tokens page)")
    if Identity.OWNER in needs:
        ways.append("the owner's login (log in at /login over HTTPS)")
    if Identity.SETUP in needs:
        ways.append("the setup code shown on the box's screen (at /setup)")
    return Unauthenticated("this needs " + ", or ".join(ways))


FORM = "application/x-www-form-urlencoded"


async def _check_csrf(request: Request) -> None:
    presented = request.headers.get(sessions.CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(FORM):
        presented = (await read_form(request)).get(sessions.CSRF_FIELD)
    if not sessions.csrf_matches(request.state.session_key, request.state.session, presented):
        raise Forbidden("this page is out of date or came from another site: reload it and try again")


def _to_https(request: Request) -> Response | None:
    """Where a browser route asked over plain HTTP is served instead (None: here), if the box has HTTPS."""
    config = request.state.config
    if plain(request.scope) and config.listeners().get("https"):
        return RedirectResponse(https_url(config, request.scope), status_code=308)
    return None


def route(path: str, endpoint: Endpoint, *, needs: Identity | tuple[Identity, ...],
          methods: list[str] | None = None, browser: bool = False) -> Route:
    """A route whose endpoint runs only for a caller proven to be one of `needs`; a `browser` route (one the
    web UI's forms post to) only over HTTPS."""
    needed = _needed(needs)
    browser = browser or needed <= COOKIE_IDENTITIES  # routes a token may call are APIs, on every listener

    async def guarded(request: Request) -> Response:
        request.scope[ROUTE_KEY] = path
        if browser and (elsewhere := _to_https(request)):
            return elsewhere
        granted = needed & request.state.identities
        if not granted:
            raise _refusal(request, needed)
        if request.method not in SAFE_METHODS:
            if Identity.TOKEN not in granted or request.state.ambient:
                if from_another_origin(request.scope):
                    raise Forbidden("a request from another site cannot change anything here: send it from the "
                                    "box's own pages, or with an API token as Authorization: Bearer")
            if granted <= COOKIE_IDENTITIES:
                await _check_csrf(request)
        return await endpoint(request)

    made = Route(path, guarded, methods=methods, name=endpoint.__name__)
    made.needs = needed  # read by the route table (docs/api.md and its test)
    return made


def page(path: str, endpoint: Endpoint, *, needs: Identity | tuple[Identity, ...] = Identity.OWNER) -> Route:
    """A page of the web UI (GET, HTTPS only).  A browser without the identity is sent where it can get it:
    to the setup wizard while the box has no owner, else to the login page."""
    needed = _needed(needs)

    async def guarded(request: Request) -> Response:
        request.scope[ROUTE_KEY] = path
        if elsewhere := _to_https(request):
            return elsewhere
        if not needed & request.state.identities:
            if not owner.finished(request.state.db):
                return RedirectResponse("/setup", status_code=303)
            return RedirectResponse(f"/login?next={urllib.parse.quote(path)}", status_code=303)
        return await endpoint(request)

    made = Route(path, guarded, methods=["GET"], name=endpoint.__name__)
    made.needs = needed
    return made


def public_files(path: str, directory) -> Mount:
    """Static files anyone may fetch: the web UI's scripts and styles, nothing of the owner's."""
    files = StaticFiles(directory=directory)

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_KEY] = path
        await files(scope, receive, send)

    made = Mount(path, app=serve, name="static")
    made.needs = frozenset({Identity.PUBLIC})
    return made
