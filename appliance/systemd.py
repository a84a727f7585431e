"""sd_notify(3) for the service: readiness, status and the watchdog heartbeat.

gunicorn's arbiter would announce READY=1 as soon as it forks, before any model
is loaded, so `paladin serve` hands the socket address to the worker under
PALADIN_NOTIFY_SOCKET instead (the unit sets NotifyAccess=all).
"""

from __future__ import annotations

import asyncio
import os
import socket

ENV = "PALADIN_NOTIFY_SOCKET"


def hide_from_gunicorn() -> None:
    if "NOTIFY_SOCKET" in os.environ:
        os.environ[ENV] = os.environ.pop("NOTIFY_SOCKET")


def notify(*lines: str) -> bool:
    address = os.environ.get(ENV) or os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # never block: a busy service manager must not stall the event loop that pings it
            sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, address)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec=, as sd_watchdog_enabled(3) advises, or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    return int(usec) / 2e6 if usec else None


async def heartbeat(interval: float) -> None:
    """Ping from the event loop itself: if the loop hangs, the pings stop and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
