"""The first-boot setup wizard: setup code, owner account, device, model, privacy, summary.

Server-rendered pages and plain forms; each step is saved as soon as it is sent (`owner.complete`), so a
reload or a reboot comes back to it, and a person can go back to any step already reached.  The code
step is public; the others need the setup session the right code starts.  Finishing turns that session
into the owner's and locks the wizard (`owner.finish`); `paladin factory-reset` on the console opens it
again.  The model step's downloads and uploads use the models API (web/models.py).
"""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import config as config_module, device, firstboot, owner, sessions
from ..config import ConfigError
from ..errors import InvalidRequest, ModelUnusable, UnknownModel
from ..inference.served import model_id
from . import models
from .auth import Identity, route
from .http import client_of, read_form
from .pages import render, set_session

log = logging.getLogger(__name__)
SWAP_WAIT = 120  # seconds the wizard's finish waits for a governor's swap (a model load under emulation)
TITLES = {"code": "Setup code", "owner": "Your account", "device": "This box", "model": "Model",
          "privacy": "Privacy", "summary": "Summary"}


def _context(request: Request, step: str, **extra) -> dict:
    db, config = request.state.db, request.state.config
    reached = owner.reached(db) if Identity.SETUP in request.state.identities else ()
    return {"step": step, "titles": TITLES, "reached": reached, "config": config, **extra}


def _step_page(request: Request, step: str, status: int = 200, **extra) -> Response:
    context = _context(request, step, **extra)
    if step == "code":
        context.setdefault("refused", device.secrets_of(request.state.config.data_path).refused_code())
    elif step == "owner":
        found = owner.account(request.state.db)
        context.setdefault("name", found["name"] if found else "")
    elif step == "device":
        context.setdefault("timezones", sorted(config_module.timezones()))
    elif step == "model":
        context.update(models.overview(request))
    elif step == "summary":
        found = owner.account(request.state.db)
        # the owner's choice, also while the governor swaps it for a moment (finish waits for that swap)
        chosen = request.state.governed.chosen
        context.update(owner_name=found["name"] if found else "",
                       model=request.state.engine.model_id or (model_id(chosen) if chosen else None))
    return render(request, "setup.html", context, status)


async def wizard(request: Request):
    """GET /setup: the step the wizard is at (or ?step=, one already reached)."""
    db = request.state.db
    if owner.finished(db):
        return RedirectResponse("/", status_code=303)
    if Identity.SETUP not in request.state.identities:
        return _step_page(request, "code", locked=_locked(request))
    asked = request.query_params.get("step", "")
    return _step_page(request, asked if asked in owner.reached(db)[1:] else owner.step(db))


def _locked(request: Request) -> bool:
    return owner.locked(request.state.db, request.state.config.server.setup_attempts)


async def code(request: Request):
    db, failures, client = request.state.db, request.state.failures, client_of(request.scope)
    # The body first, then the verdict with no await in between: a request whose body comes after the
    # lock is judged by the lock, and each attempt is counted before another is judged.
    typed = device.normalise_code((await read_form(request)).get("code", ""))
    if owner.finished(db):
        return RedirectResponse("/login", status_code=303)
    if _locked(request):
        return _step_page(request, "code", 423, locked=True)
    if wait := failures.take(client):  # charged now, given back below if right
        return _step_page(request, "code", 429, error=f"Too many wrong codes from this device. Wait {wait} seconds, "
                                                      "then type the code from the box's screen again.")
    expected = device.secrets_of(request.state.config.data_path).setup_code() or ""
    if not expected or not hmac.compare_digest(typed.encode(), expected.encode()):
        left = request.state.config.server.setup_attempts - owner.count_failure(db)
        if left <= 0:
            log.warning("setup locked after too many wrong codes; restart the box or run 'paladin setup reset'")
            return _step_page(request, "code", 423, locked=True)
        return _step_page(request, "code", 400, error=f"That is not the setup code. Type the code shown on the box's "
                                                      f"screen (letters and digits; case and dashes do not matter). "
                                                      f"{left} tries left before setup locks.")
    failures.refund(client)
    owner.clear_failures(db)
    owner.complete(db, "code")
    response = RedirectResponse("/setup", status_code=303)
    set_session(request, response, sessions.start(db, "setup"))
    return response


def _next(request: Request, step: str) -> Response:
    owner.complete(request.state.db, step)
    return RedirectResponse("/setup", status_code=303)


async def account(request: Request):
    form = await read_form(request)
    name, password = form.get("name", "").strip(), form.get("password", "")
    if password != form.get("password2", ""):
        return _step_page(request, "owner", 400, name=name, error="The two passwords differ: type the same one twice.")
    try:
        owner.set_account(request.state.db, name, password)
    except InvalidRequest as err:
        return _step_page(request, "owner", 400, name=name, error=err.message)
    return _next(request, "owner")


async def device_settings(request: Request):
    form = await read_form(request)
    changes = {"name": form.get("name", "").strip(), "timezone": form.get("timezone", "")}
    try:
        request.state.live.save({"device": changes})
    except ConfigError as err:
        return _step_page(request, "device", 400, error=f"{err}. Choose another value.")
    return _next(request, "device")


async def model(request: Request):
    """Serve the chosen installed model (the choice is saved as the owner's, like PUT /models/default)."""
    name = (await read_form(request)).get("model", "")
    try:
        await models.serve(request, name)
    except (InvalidRequest, UnknownModel, ModelUnusable) as err:
        return _step_page(request, "model", 400, error=err.message)
    return _next(request, "model")


async def privacy(request: Request):
    form = await read_form(request)
    request.state.live.save({
        "update": {"automatic": form.get("automatic") == "on"},
        "device": {"time_sync": form.get("time_sync") == "on"}})
    return _next(request, "privacy")


async def finish(request: Request):
    db = request.state.db
    if "summary" not in owner.reached(db) or owner.account(db) is None:
        return RedirectResponse("/setup", status_code=303)
    if request.state.engine.model_id is None:
        # The governor may be stepping the chosen model down or up (a first boot keeps the CPU busy): it is
        # unloaded for a moment, not missing.
        await request.state.governed.settle(SWAP_WAIT)
    if request.state.engine.model_id is None:
        return _step_page(request, "summary", 409, error="No model is loaded yet: go back to the Model step and "
                                                         "choose, download or upload one.")
    owner.finish(db)
    sessions.promote(db, request.state.session)
    sessions.end_all(db, "setup")
    config = request.state.config
    device.forget_code(device.secrets_of(config.data_path))
    try:
        firstboot.announce(config)
    except OSError as err:
        log.warning("the console's notice was not updated: %s", err)
    log.info("setup finished: the box belongs to its owner now")
    return RedirectResponse("/", status_code=303)


SETUP = Identity.SETUP
routes = [
    route("/setup", wizard, needs=Identity.PUBLIC, methods=["GET"], browser=True),
    route("/setup/code", code, needs=Identity.PUBLIC, methods=["POST"], browser=True),
    route("/setup/owner", account, needs=SETUP, methods=["POST"]),
    route("/setup/device", device_settings, needs=SETUP, methods=["POST"]),
    route("/setup/model", model, needs=SETUP, methods=["POST"]),
    route("/setup/privacy", privacy, needs=SETUP, methods=["POST"]),
    route("/setup/finish", finish, needs=SETUP, methods=["POST"]),
]
