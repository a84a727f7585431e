"""Who may reach the box, from the owner's browser: the LAN's ranges, privacy mode, SSH with a public key.

The assistant cannot change the firewall itself: it checks the owner's settings with the same validation
the firewall helper uses (so a mistake is named at once), then hands them over through the request
channel; the helper (root) applies them and records its outcome, which the page shows.
"""

from __future__ import annotations

import dataclasses
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse

from .. import channel, config as config_module
from ..config import ConfigError
from ..errors import InvalidRequest
from ..firewall import state as firewall
from ..layout import FirewallState
from .auth import Identity, page, route
from .http import read_form, read_json
from .pages import render

log = logging.getLogger(__name__)
FIELDS = tuple(f.name for f in dataclasses.fields(channel.FirewallRequest))


def _state(request: Request) -> dict:
    data_dir = request.state.config.data_path
    state = FirewallState()
    return {"settings": firewall.settings(state), "outcome": firewall.outcome(state),
            "pending": channel.pending(data_dir, "firewall"), "network_time": request.state.config.device.time_sync,
            "host_key": firewall.host_key_fingerprint(state)}


def _request(changes: dict) -> channel.FirewallRequest:
    """The whole settings the helper gets: what is kept, with `changes`, checked as the helper will."""
    wanted = firewall.settings(FirewallState()) | changes
    wanted = {name: wanted[name] for name in FIELDS}
    try:
        checked = config_module.check_firewall(wanted, "firewall")
    except ConfigError as err:
        raise InvalidRequest(str(err).removeprefix("firewall: "), param=str(err).split(":")[1].strip()) from None
    return channel.FirewallRequest(**{name: getattr(checked, name) for name in FIELDS})


def _submit(request: Request, made: channel.FirewallRequest) -> None:
    channel.submit(request.state.config.data_path, made)
    log.info("firewall request: LAN %s, privacy %s, SSH %s", made.lan, made.privacy, made.ssh)


async def access_page(request: Request):
    return render(request, "access.html", _state(request))


async def change_from_form(request: Request):
    form = await read_form(request)
    changes = {"lan": " ".join(form.get("lan", "").split()), "privacy": form.get("privacy") == "on",
               "ssh": form.get("ssh") == "on", "ssh_key": form.get("ssh_key", "").strip()}
    try:
        made = _request(changes)
    except InvalidRequest as err:
        return render(request, "access.html", _state(request) | {"settings": changes, "error": err.message}, 400)
    _submit(request, made)
    return RedirectResponse("/access", status_code=303)


async def status(request: Request):
    return JSONResponse(_state(request))


async def change(request: Request):
    body = await read_json(request)
    unknown = set(body) - set(FIELDS)
    if unknown or not body:
        raise InvalidRequest(f"send one or more of {', '.join(FIELDS)}, and nothing else")
    made = _request(body)
    _submit(request, made)
    return JSONResponse({"status": "requested", "settings": dataclasses.asdict(made)}, status_code=202)


# The owner alone: an API token (held by Home Assistant, say) must never open SSH or widen the LAN.
routes = [
    page("/access", access_page),
    route("/access", change_from_form, needs=Identity.OWNER, methods=["POST"]),
    route("/system/firewall", status, needs=Identity.OWNER, methods=["GET"]),
    route("/system/firewall", change, needs=Identity.OWNER, methods=["PUT"]),
]
