"""HTTP plumbing shared by the API modules: JSON bodies, errors, disconnects, limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError, bad_request


async def read_json(request: Request) -> dict:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    return data


def field(data: dict, name: str, kind: type | tuple, default: Any = None, *, required: bool = False,
          low: float | None = None, high: float | None = None) -> Any:
    """One validated field of a JSON body; errors name the field and what it must be."""
    if name not in data or data[name] is None:
        if required:
            raise bad_request(f"'{name}' is required", name)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                             list: "an array", dict: "an object"}[k] for k in kinds)
        raise bad_request(f"'{name}' must be {names}, got {json.dumps(value)[:80]}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise bad_request(f"'{name}' must be between {low} and {high}, got {value}", name)
    return value


def openai_error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


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
    """Refuse request bodies over `limit` bytes with 413, before a handler buffers them.

    Paths in `streamed` are exempt: their handlers stream the body to disk and bound it themselves.
    """

    def __init__(self, app: ASGIApp, limit: int, error: Callable[[APIError], JSONResponse] = openai_error,
                 streamed: tuple[str, ...] = ()):
        self.app, self.limit, self.error, self.streamed = app, limit, error, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streamed:
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self.error(too_large)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            return message

        await self.app(scope, limited, send)
