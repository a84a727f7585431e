"""The web side of updates: the updater's status, the owner's update settings, requests, bundles.

The assistant runs unprivileged and cannot write a slot.  It hands the updater a request through the
request channel (`appliance.channel`): install from the owner's configured repository, or from the
bundle uploaded here.  The updater verifies everything with TUF and reports back in its state files.
The owner's page (/manage/updates) shows them and calls these routes from its script.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import channel
from ..update import status as update_status
from .auth import Identity, page, route
from . import bodies
from .http import parse, read_json, receive_file, save_settings
from .pages import render

BUNDLE_PATH = "/update/bundle"
BUNDLE_MAX_BYTES = 8 * 2**30
SPACE_FACTOR = 4
SETTINGS = ("url", "automatic", "reboot")


# The phases of an attempt that is still going (the page follows them); any other phase is how one ended.
WORKING = ("starting", "fetch", "metadata", "unpack", "download", "write", "verify", "uki", "boot", "rebooting")


def _status(request: Request) -> dict:
    data = update_status.snapshot()
    data["update"] = update_status.progress(data_dir=request.state.config.data_path)
    data["pending"] = channel.pending(request.state.config.data_path, "update")
    return data


async def status(request: Request):
    return JSONResponse(_status(request))


async def updates_page(request: Request):
    data = _status(request)
    return render(request, "updates.html", {
        "status": data, "running": data.get("running") or update_status.running_version(),
        "roots": [s for s in data.get("slots", []) if s.get("kind") == "root"], "kernels": data.get("kernels", []),
        "refusal": data.get("refusal"), "attempts": data.get("attempts", [])[-3:][::-1], "settings": request.state.config.update,
        "working": data["pending"] or data["update"].get("phase") in WORKING,
        "timezone": request.state.config.device.timezone, "bundle_path": BUNDLE_PATH})


async def settings(request: Request):
    """Change the owner's update settings (`update.url`, `update.automatic`, `update.reboot`)."""
    return await save_settings(request, "update", SETTINGS)


async def start(request: Request):
    body = parse(bodies.UpdateStart, await read_json(request))
    channel.submit(request.state.config.data_path, channel.UpdateRequest(source=body.source, reboot=body.reboot))
    return JSONResponse({"status": "requested", "source": body.source}, status_code=202)


async def upload_bundle(request: Request):
    """PUT the bundle file as the request body; installed with a reboot unless ?reboot=false."""
    data_dir = request.state.config.data_path
    bundle = channel.attachment(data_dir, "update", "bundle")
    bundle.parent.mkdir(exist_ok=True)
    # The upload, then the updater's unpacked copy and its staged copy (with python-tuf's temporary one).
    received = await receive_file(request, bundle, what="a bundle", max_bytes=BUNDLE_MAX_BYTES,
                                  space_factor=SPACE_FACTOR)
    reboot = request.query_params.get("reboot", "true") != "false"
    channel.submit(data_dir, channel.UpdateRequest(source="bundle", reboot=reboot))
    return JSONResponse({"status": "requested", "source": "bundle", "bytes": received.size}, status_code=202)


OWNER = (Identity.OWNER, Identity.TOKEN)
routes = [
    route("/update", status, needs=OWNER, methods=["GET"]),
    route("/update", start, needs=OWNER, methods=["POST"]),
    route("/update/settings", settings, needs=OWNER, methods=["PUT"]),
    route(BUNDLE_PATH, upload_bundle, needs=OWNER, methods=["PUT"]),
    page("/manage/updates", updates_page),
]
