"""HTTP plumbing shared by the API modules: JSON bodies, errors, disconnects, limits."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import errors
from ..errors import InvalidRequest, ServiceError, TooLarge, TooSlow

# Each domain error as HTTP: status, OpenAI's error type and code.  The most specific class wins.
STATUS: dict[type[ServiceError], tuple[int, str, str | None]] = {
    ServiceError: (400, "invalid_request_error", None),
    errors.InvalidRequest: (400, "invalid_request_error", "invalid_value"),
    errors.PromptTooLong: (400, "invalid_request_error", "context_length_exceeded"),
    errors.Unauthenticated: (401, "authentication_error", "invalid_api_key"),
    errors.NotFound: (404, "invalid_request_error", "not_found"),
    errors.UnknownModel: (404, "invalid_request_error", "model_not_found"),
    errors.TooSlow: (408, "invalid_request_error", "request_timeout"),
    errors.TooLarge: (413, "invalid_request_error", "body_too_large"),
    errors.ModelUnusable: (422, "invalid_request_error", "model_unusable"),
    errors.TooManyRequests: (429, "rate_limit_error", "rate_limit_exceeded"),
    errors.QueueFull: (429, "rate_limit_error", "queue_full"),
    errors.GenerationFailed: (500, "server_error", None),
    errors.NotReady: (503, "server_error", "unavailable"),
    errors.NoSpace: (507, "server_error", "no_space"),
}


def status_of(err: ServiceError) -> tuple[int, str, str | None]:
    return next(STATUS[cls] for cls in type(err).__mro__ if cls in STATUS)


def error_headers(err: ServiceError) -> dict[str, str]:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}
    if isinstance(err, errors.Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="paladin", Basic realm="paladin"'
    return headers


def openai_error(err: ServiceError) -> JSONResponse:
    """OpenAI's error object; the web UI's own routes use it as well."""
    status, kind, code = status_of(err)
    code = code if code != "invalid_value" or err.param else None
    return JSONResponse({"error": {"message": err.message, "type": kind, "param": err.param, "code": code}},
                        status_code=status, headers=error_headers(err))


def peer_address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's IP address, an IPv4 one on a dual-stack socket (::ffff:a.b.c.d) as plain IPv4; None for
    anything that is not an address (a Unix socket, the in-process test client)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def client_of(scope: Scope) -> str:
    """Who is asking, as the per-client limits count: the peer's address, else whatever the server named."""
    host = scope["client"][0] if scope.get("client") else ""
    address = peer_address(host)
    return str(address) if address else host


async def read_json(request: Request) -> dict:
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError as err:  # also UTF-8 errors, and an integer longer than Python converts (4300 digits)
        raise InvalidRequest(f"the request body is not valid JSON: {str(err)[:200]}") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def field(data: dict, name: str, kind: type | tuple, default: Any = None, *, required: bool = False,
          low: float | None = None, high: float | None = None) -> Any:
    """One validated field of a JSON body; errors name the field and what it must be."""
    if name not in data or data[name] is None:
        if required:
            raise InvalidRequest(f"'{name}' is required", param=name)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                             list: "an array", dict: "an object"}[k] for k in kinds)
        raise InvalidRequest(f"'{name}' must be {names}, got {json.dumps(value)[:80]}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequest(f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable) -> Any:
    """Await `work`, cancelling it if the client goes away first (then raise CancelledError)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    return task.result()


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, and bodies not complete `seconds` after the
    first read with 408, before a handler buffers them.

    Paths in `streamed` are exempt: their handlers stream the body to disk and bound it themselves.
    """

    def __init__(self, app: ASGIApp, limit: int, seconds: float, error: Callable[[str, ServiceError], JSONResponse],
                 streamed: tuple[str, ...] = ()):
        self.app, self.limit, self.seconds, self.error, self.streamed = app, limit, seconds, error, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streamed:
            return await self.app(scope, receive, send)
        too_large = TooLarge(f"the request body is larger than {self.limit} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self.error(scope["path"], too_large)(scope, receive, send)
        seen, complete, deadline = 0, False, None

        async def limited() -> dict:
            nonlocal seen, complete, deadline
            if complete:  # later reads wait for a disconnect, for as long as a response streams
                return await receive()
            deadline = deadline or asyncio.get_running_loop().time() + self.seconds
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                raise TooSlow(f"the request body did not arrive within {self.seconds} seconds") from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, limited, send)
