"""HTTP plumbing shared by the API modules: JSON bodies, errors, disconnects, limits, streamed uploads."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import typing
import urllib.parse
from pathlib import Path
from typing import Any, Awaitable, BinaryIO, Callable, NamedTuple, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import config, errors, files
from ..config import schema
from ..errors import Conflict, InvalidRequest, NoSpace, ServiceError, TooLarge, TooSlow, UnsupportedMediaType

T = TypeVar("T")

# Each domain error as HTTP: status, OpenAI's error type and code.  The most specific class wins.
STATUS: dict[type[ServiceError], tuple[int, str, str | None]] = {
    ServiceError: (400, "invalid_request_error", None),
    errors.InvalidRequest: (400, "invalid_request_error", "invalid_value"),
    errors.PromptTooLong: (400, "invalid_request_error", "context_length_exceeded"),
    errors.Unauthenticated: (401, "authentication_error", "invalid_api_key"),
    errors.Forbidden: (403, "permission_error", "csrf"),
    errors.NotFound: (404, "invalid_request_error", "not_found"),
    errors.UnknownModel: (404, "invalid_request_error", "model_not_found"),
    errors.MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed"),
    errors.TooSlow: (408, "invalid_request_error", "request_timeout"),
    errors.Conflict: (409, "invalid_request_error", "conflict"),
    errors.TooLarge: (413, "invalid_request_error", "body_too_large"),
    errors.UnsupportedMediaType: (415, "invalid_request_error", "unsupported_media_type"),
    errors.ModelUnusable: (422, "invalid_request_error", "model_unusable"),
    errors.TooManyRequests: (429, "rate_limit_error", "rate_limit_exceeded"),
    errors.QueueFull: (429, "rate_limit_error", "queue_full"),
    errors.GenerationFailed: (500, "server_error", None),
    errors.DownloadFailed: (502, "server_error", "download_failed"),
    errors.NotReady: (503, "server_error", "unavailable"),
    errors.NoSpace: (507, "server_error", "no_space"),
}


def status_of(err: ServiceError) -> tuple[int, str, str | None]:
    return next(STATUS[cls] for cls in type(err).__mro__ if cls in STATUS)


def error_headers(err: ServiceError) -> dict[str, str]:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}
    if isinstance(err, errors.Unauthenticated):
        # Not Basic: a browser that once prompted for it would attach it to other sites' requests by itself.
        headers["WWW-Authenticate"] = 'Bearer realm="paladin"'
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


JSON_TYPES = ("application/json", "+json")


async def read_json(request: Request) -> dict:
    """The body as a JSON object.  It must be declared JSON unless a Bearer token proved the caller: a cross-site
    HTML form can send text/plain with a browser's cookie or Basic credentials, never application/json."""
    declared = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if getattr(request.state, "ambient", True) and not declared.endswith(JSON_TYPES):
        raise UnsupportedMediaType(f"send the body as JSON with Content-Type: application/json "
                                   f"(not {declared[:60] or 'nothing'})")
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


async def save_settings(request: Request, section: str, keys: tuple[str, ...]) -> JSONResponse:
    """Save some of the owner's settings `section`.`keys` from a JSON body, checked as any configuration is;
    answers with the whole section as saved."""
    body = await read_json(request)
    if not body or set(body) - set(keys):
        raise InvalidRequest(f"send one or more of {', '.join(keys)}, and nothing else")
    try:
        saved = request.state.live.save({section: body})
    except config.ConfigError as err:
        raise InvalidRequest(str(err), param=next(iter(body))) from None
    return JSONResponse(config.to_dict(saved)[section])


MAX_FORM_FIELDS = 32


async def read_form(request: Request) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded; the body is bounded by BodyLimit)."""
    try:
        pairs = urllib.parse.parse_qsl((await request.body()).decode(), keep_blank_values=True,
                                       max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the form could not be read: reload the page and send it again") from None
    return dict(pairs)


def _field(data: dict, key: str, name: str, kinds: tuple[type, ...], default: Any = None, *,
           required: bool = False, low: float | None = None, high: float | None = None) -> Any:
    """The value `key` of a JSON object, checked; errors name it (`name`: its path in the body) and what it
    must be."""
    if key not in data or data[key] is None:
        if required:
            raise InvalidRequest(f"'{name}' is required", param=name)
        return default
    value = data[key]
    if float in kinds and isinstance(value, int):
        value = float(value)
    elif int in kinds and isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one kind of number: Home Assistant's number fields send 8192.0
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                             list: "an array", dict: "an object"}[k] for k in kinds)
        raise InvalidRequest(f"'{name}' must be {names}, got {json.dumps(value)[:80]}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low} and {high}" if low is not None and high is not None else
                  f"at least {low}" if low is not None else f"at most {high}")
        raise InvalidRequest(f"'{name}' must be {bounds}, got {value}", param=name)
    return value


def parse(cls: type[T], data: dict, prefix: str = "") -> T:
    """A request body, declared as a table (web/bodies.py), read in one pass into its frozen object: each
    field checked by `_field`, or taken by its `read`; a section from the object of its name."""
    hints, values = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        name, meta, kind = prefix + f.name, f.metadata, hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = parse(kind, _field(data, f.name, name, (dict,), {}), f"{name}.")
        elif meta["read"] is None:
            values[f.name] = _field(data, f.name, name, schema.json_kinds(kind), f.default, required=meta["required"],
                                    low=meta["minimum"], high=meta["maximum"])
        else:
            try:
                values[f.name] = meta["read"](data.get(f.name))
            except ValueError as err:
                raise InvalidRequest(str(err), param=name) from None
    return cls(**values)


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


class Received(NamedTuple):
    size: int
    sha256: str


def _claim(partial: Path, busy: str) -> BinaryIO:
    """`partial` opened empty for one upload, locked against a second one to the same file.  The lock dies
    with its process, so an upload killed mid-way blocks nobody; the file is emptied only once it is sure
    to be the one locked (another upload may rename its own into place between this open and this lock)."""
    out = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "wb")
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ours = os.path.samestat(os.fstat(out.fileno()), os.stat(partial, follow_symlinks=False))
    except (BlockingIOError, FileNotFoundError):
        ours = False
    if not ours:
        out.close()
        raise Conflict(busy)
    out.truncate(0)
    return out


def _write(out: BinaryIO, digest: "hashlib._Hash", chunk: bytes) -> None:
    out.write(chunk)
    digest.update(chunk)


async def pour(request: Request, out: BinaryIO, directory: Path, *, what: str, max_bytes: int, expected: int,
               magic: bytes = b"") -> tuple[int, "hashlib._Hash"]:
    """The body into `out` (a file in `directory`), hashed on the way; its size and digest."""
    idle = request.state.config.server.header_seconds
    not_it = (f"what arrived is not {what} (it does not begin with {magic.decode()!r}); nothing was kept: "
              "check the file and send it again")
    digest, size, head = hashlib.sha256(), 0, b""
    chunks = request.stream()
    while True:
        try:
            async with asyncio.timeout(idle):  # a stalled client would hold the file and its lock for ever
                chunk = await anext(chunks, None)
        except TimeoutError:
            raise TooSlow(f"nothing arrived for {idle} seconds; nothing was kept, send {what} again") from None
        if chunk is None:
            break
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{what} is at most {max_bytes} bytes")
        if size > expected and (problem := files.shortfall(directory, len(chunk))):
            raise NoSpace(f"{problem}; more arrived than announced, nothing was kept")
        if len(head) < len(magic):  # refused on its first bytes, not after gigabytes
            head = (head + chunk)[:len(magic)]
            if not magic.startswith(head):
                raise InvalidRequest(not_it)
        # Off the event loop: writing gigabytes to an SD card stalls in the kernel now and then.
        await asyncio.to_thread(_write, out, digest, chunk)
    if head != magic:
        raise InvalidRequest(not_it)
    return size, digest


async def receive_file(request: Request, dest: Path, *, what: str, max_bytes: int, space_factor: int = 1,
                       magic: bytes = b"", sha256: str | None = None,
                       check: Callable[[Path], Any] | None = None) -> Received:
    """Stream the request body into `dest`, never whole in memory, and put it in place (durably, replacing
    what was there) only once all of it is in and checked; a refused or cut-short upload leaves nothing.

    `what` names the file in error messages ("a bundle").  Bounds: at most `max_bytes`; before a byte is
    written `space_factor` times the announced length must fit beside files.RESERVE_BYTES, and each
    byte past the announced length is checked as it comes, so no or a wrong Content-Length never fills the
    partition; a pause of `server.header_seconds` ends it; the body must begin with `magic` and, when
    `sha256` pins it, hash to that, and then `check` (run in a thread on the complete partial file; it raises
    a ServiceError) must pass.  A second upload to `dest` while one runs is a Conflict.
    """
    length = request.headers.get("content-length", "")
    # More digits than any disk has bytes is no announcement (and int() refuses 4300 digits).
    expected = int(length) if length.isdigit() and len(length) <= 18 else 0
    if expected > max_bytes:
        raise TooLarge(f"{what} is at most {max_bytes} bytes, this one has {expected}")
    if problem := files.shortfall(dest.parent, space_factor * expected):
        factor = f"; {what} needs {space_factor} times its size there" if space_factor > 1 else ""
        raise NoSpace(f"{problem}{factor}. Free space on the box and send it again")
    partial = files.partial(dest)
    out = _claim(partial, f"{dest.name} is being uploaded already; wait for that upload to end")
    try:
        try:
            size, digest = await pour(request, out, dest.parent, what=what, max_bytes=max_bytes,
                                       expected=expected, magic=magic)
            out.flush()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise NoSpace("the data partition filled up during the upload (something else wrote to it too); "
                          "nothing was kept. Free space on the box and send it again") from None
        if sha256 is not None and digest.hexdigest() != sha256:
            raise InvalidRequest(f"{dest.name} must have SHA-256 {sha256} (its pin), what arrived has "
                                 f"{digest.hexdigest()}: a different or damaged file. Nothing was kept; send an "
                                 "intact copy, or a different file under another name")
        if check is not None:
            await asyncio.to_thread(check, partial)
    except BaseException:
        partial.unlink(missing_ok=True)  # still ours: unlinked before the lock goes
        out.close()
        raise
    try:
        await asyncio.to_thread(files.commit, partial, dest)  # fsync'ing gigabytes takes seconds
    finally:
        out.close()
    return Received(size, digest.hexdigest())


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
