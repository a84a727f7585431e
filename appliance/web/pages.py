"""The web UI's server-rendered pages: one template set, and what every page is given."""

from __future__ import annotations

import datetime
import zoneinfo
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .. import sessions
from .auth import Identity

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# The owner's frame (base.html): every page of the owner's, in the order the nav shows them.
NAV = (("/", "Chat"), ("/manage/models", "Models"), ("/manage/updates", "Updates"), ("/manage/backups", "Backups"),
       ("/manage/system", "System"), ("/manage/governor", "Resources"), ("/access", "Network access"),
       ("/tokens", "API tokens"))


def when(timestamp: float, zone: str) -> str:
    """A time as the owner reads it: in the box's time zone, to the minute."""
    return datetime.datetime.fromtimestamp(timestamp, zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def size(count: int | None) -> str:
    """A byte count as the owner reads it: MB below a gigabyte, GB above (decimal, as disks are sold)."""
    if count is None:
        return "unknown"
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


templates.env.filters["when"] = when
templates.env.filters["size"] = size


def csrf(request: Request) -> str | None:
    session = request.state.session
    return sessions.csrf_token(request.state.session_key, session) if session else None


def render(request: Request, template: str, context: dict, status: int = 200) -> Response:
    # The frame's nav is the owner's alone: the setup wizard's session has a CSRF token too, but no owner yet.
    owner = Identity.OWNER in request.state.identities
    response = templates.TemplateResponse(request, template, {
        "device_name": request.state.config.device.name, "csrf": csrf(request), "owner": owner,
        "nav": NAV if owner else (), **context}, status_code=status)
    # The owner's pages are never cached, and no other site may frame them (clickjacking).
    response.headers.update({"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                                        "form-action 'self'"})
    return response


def set_session(request: Request, response: Response, raw: str) -> None:
    hours = request.state.config.server.session_hours
    response.set_cookie(sessions.COOKIE, raw, max_age=hours * 3600, path="/", secure=True, httponly=True,
                        samesite="lax")


def clear_session(response: Response) -> None:
    response.delete_cookie(sessions.COOKIE, path="/", secure=True, httponly=True, samesite="lax")
