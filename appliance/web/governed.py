"""The resource governor shown to its owner: its state in `GET /governor` (and /health, /metrics), its
history in `GET /governor/history`, its settings, and the page /manage/governor.  What follows the
governor is governor/client.py.
"""

from __future__ import annotations

import asyncio
import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..config import GovernorConfig
from ..errors import InvalidRequest, NotReady
from ..governor.client import Governed, exchange
from ..governor.protocol import HistoryQuery
from .auth import Identity, page, route
from .http import save_settings
from .pages import render

SETTINGS = tuple(f.name for f in dataclasses.fields(GovernorConfig))


def _governed(request: Request) -> Governed:
    return request.state.governed


async def state(request: Request):
    governed = _governed(request)
    return JSONResponse({"connected": governed.status is not None, "problem": governed.problem,
                         **(governed.status or {})})


async def history(request: Request):
    try:
        since = float(request.query_params.get("since", "0"))
    except ValueError:
        raise InvalidRequest("'since' is a time in seconds since the epoch", param="since") from None
    try:
        reply = await exchange(_governed(request).socket, HistoryQuery(since))
    except (OSError, ValueError, asyncio.TimeoutError) as err:  # ValueError: MessageError or broken JSON
        raise NotReady(f"the resource governor does not answer: {err}", retry_after=5) from None
    return JSONResponse(reply)


async def settings(request: Request):
    """Change the owner's governor settings: the pin and the limits (0: the board's default)."""
    return await save_settings(request, "governor", SETTINGS)


async def governor_page(request: Request):
    governed = _governed(request)
    return render(request, "governor.html", {"status": governed.status, "problem": governed.problem,
                                             "settings": request.state.config.governor,
                                             "timezone": request.state.config.device.timezone})


OWNER = (Identity.OWNER, Identity.TOKEN)
routes = [
    route("/governor", state, needs=OWNER, methods=["GET"]),
    route("/governor/history", history, needs=OWNER, methods=["GET"]),
    route("/governor/settings", settings, needs=OWNER, methods=["PUT"]),
    page("/manage/governor", governor_page),
]
