"""The web UI's server-rendered pages: one template set, and what every page is given."""

from __future__ import annotations

import datetime
import zoneinfo
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .. import sessions

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def when(timestamp: float, zone: str) -> str:
    """A time as the owner reads it: in the box's time zone, to the minute."""
    return datetime.datetime.fromtimestamp(timestamp, zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


templates.env.filters["when"] = when


def csrf(request: Request) -> str | None:
    session = request.state.session
    return sessions.csrf_token(request.state.session_key, session) if session else None


def render(request: Request, template: str, context: dict, status: int = 200) -> Response:
    response = templates.TemplateResponse(request, template, {
        "device_name": request.state.config.device.name, "csrf": csrf(request), **context}, status_code=status)
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
