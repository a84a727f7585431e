"""The web side of updates: show the updater's status, pass it a request or an uploaded bundle.

The assistant runs unprivileged and cannot write a slot.  It drops `request.json` (and the uploaded
`bundle`) into <data_dir>/update/; paladin-update.path starts the privileged updater, which treats
both as untrusted and verifies everything with TUF.  Status comes back as JSON files it writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import update
from .config import Config
from .errors import APIError
from .http import field, read_json

BUNDLE_MAX_BYTES = 8 * 2**30


def inbox(config: Config) -> Path:
    return config.data_path / "update"


def _request(config: Config, request: dict) -> None:
    directory = inbox(config)
    directory.mkdir(exist_ok=True)
    partial = directory / "request.json.partial"
    partial.write_text(json.dumps(request))
    partial.replace(directory / "request.json")


async def status(request: Request):
    state = update.STATE
    data = update.read_state(state / "snapshot.json", {})
    data["update"] = update.read_state(state / "status.json", {"phase": "idle"})
    data["pending"] = (inbox(request.state.config) / "request.json").exists()
    return JSONResponse(data)


async def start(request: Request):
    body = await read_json(request)
    source = field(body, "source", str, default="")
    reboot = field(body, "reboot", bool, default=request.state.config.update.reboot)
    if source and not source.startswith(("http://", "https://", "/")):
        raise APIError(400, f"source {source!r} is not an http(s) URL or an absolute path", param="source")
    _request(request.state.config, {"source": source, "reboot": reboot})
    return JSONResponse({"status": "requested", "source": source or request.state.config.update.url}, status_code=202)


async def upload_bundle(request: Request):
    """PUT the bundle file as the request body; installed with a reboot unless ?reboot=false."""
    config: Config = request.state.config
    directory = inbox(config)
    directory.mkdir(exist_ok=True)
    length = request.headers.get("content-length")
    free = shutil.disk_usage(directory).free
    if length and length.isdigit() and int(length) * 3 > free:  # the bundle, its unpacked copy, the staging
        raise APIError(507, f"not enough space for a {length}-byte bundle ({free} bytes free)", code="no_space")
    partial = directory / "bundle.partial"
    size = 0
    with partial.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > BUNDLE_MAX_BYTES:
                out.close()
                partial.unlink()
                raise APIError(413, f"a bundle is at most {BUNDLE_MAX_BYTES} bytes", code="body_too_large")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(directory / "bundle")
    reboot = request.query_params.get("reboot", "true") != "false"
    _request(config, {"source": "bundle", "reboot": reboot})
    return JSONResponse({"status": "requested", "source": "bundle", "bytes": size}, status_code=202)


routes = [
    Route("/update", status, methods=["GET"]),
    Route("/update", start, methods=["POST"]),
    Route("/update/bundle", upload_bundle, methods=["PUT"]),
]
