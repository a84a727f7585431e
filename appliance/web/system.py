"""The box's state for its owner: name, addresses, certificate, disk, memory, uptime, the served model and
the recent errors in the system journal (GET /system, and the page /manage/system).

Everything here is read, never changed, and each part that cannot be read says why instead of failing the
whole page: the service's sandbox hides most of /proc (`ProcSubset=pid`), and on a development machine the
service's user may not read the system journal.  On the box, paladin.service is in the group
`systemd-journal` for this.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import psutil
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import command, device, store
from ..backup import contents
from ..config import Config
from ..inference.probe import Proofs
from ..update import status as update_status
from .auth import Identity, page, route
from .models import total_ram
from .pages import render

JOURNAL_ENTRIES = 30
JOURNAL_DAYS = 7
JOURNAL_SECONDS = 5
MESSAGE_CHARS = 500
JOURNAL = ["journalctl", "--priority=err", f"--lines={JOURNAL_ENTRIES}", f"--since=-{JOURNAL_DAYS}d", "--output=json",
           "--output-fields=MESSAGE,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,PRIORITY", "--no-pager", "--quiet"]


def _message(value) -> str:
    """A journal MESSAGE as text: the journal's JSON gives a list of byte values for one that is not UTF-8,
    and null for one too large for it to export."""
    if isinstance(value, list):
        value = bytes(b for b in value if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = "(a message the journal did not export: read it with journalctl)"
    value = value.strip()
    return value if len(value) <= MESSAGE_CHARS else value[:MESSAGE_CHARS - 1] + "…"


def _entry(line: str) -> dict | None:
    try:
        fields = json.loads(line)
        seconds = int(fields["__REALTIME_TIMESTAMP"]) / 1e6
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(fields, dict):
        return None
    unit = fields.get("_SYSTEMD_UNIT") or fields.get("SYSLOG_IDENTIFIER") or "kernel"
    return {"time": seconds, "unit": unit if isinstance(unit, str) else "?", "message": _message(fields.get("MESSAGE"))}


def journal_errors() -> list[dict] | str:
    """The last errors of the system journal (at most JOURNAL_ENTRIES, of the last JOURNAL_DAYS days), newest
    first; or, when it cannot be read, why, in words the owner can act on."""
    try:
        out = command.run(JOURNAL, timeout=JOURNAL_SECONDS)
    except command.CommandError as err:
        return (f"The journal could not be read: {err}. At the box's console, 'journalctl -p err' shows the same "
                "errors; on a development machine, run the service as a user in the systemd-journal group.")
    entries = [entry for line in out.splitlines()[-JOURNAL_ENTRIES:] if (entry := _entry(line))]
    return entries[::-1]


def memory() -> dict:
    """Total and available memory.  The sandbox hides /proc/meminfo: then what the kernel counts as free
    (sysinfo), which leaves out the caches it would give back."""
    try:
        found = psutil.virtual_memory()
        return {"total": found.total, "available": found.available, "counted": "available"}
    except OSError:
        return {"total": total_ram(), "available": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"),
                "counted": "free"}


def disk(config: Config) -> dict:
    usage = shutil.disk_usage(config.data_path)
    models = store.installed(config.data.models)
    return {"path": str(config.data_path), "total": usage.total, "used": usage.used, "free": usage.free,
            "models": {"count": len(models), "bytes": sum(models.values())}}


def fingerprint(config: Config) -> str | None:
    """The HTTPS certificate's SHA-256 fingerprint, as the console and the setup pages show it."""
    try:
        return device.secrets_of(config.data_path).fingerprint()
    except (OSError, ValueError):
        return None


def cpu_variant(proofs: Proofs | None) -> dict:
    """The llama.cpp CPU variant the worker proved and runs, and why ({} before any model was loaded)."""
    current = proofs.current() if proofs else {}
    return {key: current[key] for key in ("variant", "why") if key in current}


async def state(request: Request) -> dict:
    config: Config = request.state.config
    engine = request.state.engine.status()
    try:
        addresses = [str(a) for a in device.addresses()]
    except OSError as err:
        addresses = [f"unknown ({err.strerror})"]
    return {"device": config.device.name, "version": update_status.running_version(), "addresses": addresses,
            "fingerprint": fingerprint(config), "disk": disk(config), "memory": memory(),
            "uptime": round(time.clock_gettime(time.CLOCK_BOOTTIME)),
            "model": {key: engine.get(key) for key in ("state", "reason", "model", "path", "size_bytes")},
            "cpu_variant": cpu_variant(request.state.proofs), "backup": contents.health(config.data),
            "journal": await asyncio.to_thread(journal_errors)}


async def status(request: Request):
    return JSONResponse(await state(request))


def _duration(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days} d " if days else "") + f"{hours} h {rest // 60} min"


async def system_page(request: Request):
    data = await state(request)
    return render(request, "system.html", data | {"timezone": request.state.config.device.timezone,
                                                  "uptime_text": _duration(data["uptime"]),
                                                  "booted": time.time() - data["uptime"]})


routes = [
    route("/system", status, needs=(Identity.OWNER, Identity.TOKEN), methods=["GET"]),
    page("/manage/system", system_page),
]
