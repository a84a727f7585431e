"""The owner's account in the browser: logging in and out, and the API tokens (made, shown once, revoked),
so that no one ever needs a shell on the box."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

from starlette.requests import Request
from starlette.responses import RedirectResponse

from .. import owner, sessions, tokens
from .auth import Identity, page, route
from .http import client_of, read_form
from .pages import clear_session, render, set_session

log = logging.getLogger(__name__)
# scrypt takes 32 MiB and a tenth of a second per password: two at a time bound what a flood of logins
# from many addresses can take from the model.
HASHING = asyncio.Semaphore(2)
MAX_TOKEN_NAME = 64


def _local(target: str) -> str:
    """Where to go after logging in: a path on this box only (never another site)."""
    parts = urllib.parse.urlsplit(target)
    return target if target.startswith("/") and not target.startswith("//") and not parts.netloc else "/"


async def login_page(request: Request):
    if not owner.finished(request.state.db):
        return RedirectResponse("/setup", status_code=303)
    return render(request, "login.html", {"next": _local(request.query_params.get("next", "/"))})


async def login(request: Request):
    db, failures, client = request.state.db, request.state.failures, client_of(request.scope)
    if not owner.finished(db):  # the account a wizard made counts once the wizard is finished
        return RedirectResponse("/setup", status_code=303)
    form = await read_form(request)
    target = _local(form.get("next", "/"))
    if wait := failures.take(client):  # charged before the hash, given back below if right
        return render(request, "login.html", {"next": target, "error": f"Too many wrong passwords from this device. "
                                              f"Wait {wait} seconds, then try again."}, 429)
    async with HASHING:
        right = await asyncio.to_thread(owner.check_login, db, form.get("name", ""), form.get("password", ""))
    if not right:
        return render(request, "login.html", {"next": target, "name": form.get("name", ""), "error":
                      "The name or the password is wrong. Check both (the password is case-sensitive) and try "
                      "again; forgotten passwords need a factory reset on the box's console."}, 401)
    failures.refund(client)
    response = RedirectResponse(target, status_code=303)
    set_session(request, response, sessions.start(db, "owner"))
    return response


async def logout(request: Request):
    sessions.end(request.state.db, request.state.session)
    response = RedirectResponse("/login", status_code=303)
    clear_session(response)
    return response


def _tokens_page(request: Request, status: int = 200, **extra):
    live = [t for t in tokens.listing(request.state.db) if not t["revoked"]]
    return render(request, "tokens.html", {"tokens": live, "timezone": request.state.config.device.timezone,
                                           **extra}, status)


async def tokens_page(request: Request):
    return _tokens_page(request)


async def create_token(request: Request):
    name = (await read_form(request)).get("name", "").strip()
    if not name or len(name) > MAX_TOKEN_NAME or not name.isprintable():
        return _tokens_page(request, 400, error=f"Give the token a name of 1 to {MAX_TOKEN_NAME} characters, "
                                                "such as the app that will use it (Home Assistant).")
    if name in tokens.live_names(request.state.db):
        return _tokens_page(request, 400, error=f"A token named '{name}' exists: choose another name, or revoke it "
                                                "first.")
    made = tokens.create(request.state.db, name)
    log.info("API token '%s' created in the browser", name)
    return _tokens_page(request, 201, created={"name": name, "token": made})


async def revoke_token(request: Request):
    name = (await read_form(request)).get("name", "")
    tokens.revoke(request.state.db, name)
    log.info("API token '%s' revoked in the browser", name)
    return RedirectResponse("/tokens", status_code=303)


routes = [
    route("/login", login_page, needs=Identity.PUBLIC, methods=["GET"], browser=True),
    route("/login", login, needs=Identity.PUBLIC, methods=["POST"], browser=True),
    route("/logout", logout, needs=Identity.OWNER, methods=["POST"]),
    page("/tokens", tokens_page),
    route("/tokens", create_token, needs=Identity.OWNER, methods=["POST"]),
    route("/tokens/revoke", revoke_token, needs=Identity.OWNER, methods=["POST"]),
]
