"""`paladin-governor`: sample the box, step the assistant's model down and up, keep the history."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
from pathlib import Path

from .. import facts, logs
from ..layout import GovernorState
from ..verbs import arg, parser, verb
from .daemon import Governor, allowed_uids
from .history import History
from .sensors import Sensors

log = logging.getLogger(__name__)


async def _run(args) -> None:
    governor = Governor(GovernorState(Path(args.state)), Sensors(Path(args.sys), Path(args.proc)), args.interval)
    task = asyncio.create_task(governor.serve(Path(args.socket), allowed_uids(args.client_user)))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        governor.history.close()  # the buffered samples survive a stop


def cmd_run(args) -> None:
    asyncio.run(_run(args))


def cmd_history(args) -> None:
    path = GovernorState(Path(args.state)).history
    try:
        history = History(path, readonly=True)
    except sqlite3.Error as err:
        raise OSError(f"{path}: no readable history ({err}); is this the governor's state directory?") from None
    print(json.dumps({"samples": list(history.samples), "decisions": history.decisions()}))


VERBS = {
    "run": verb(cmd_run, "sample and govern until stopped (paladin-governor.service)",
                arg("--socket", default=facts.GOVERNOR_SOCKET, help="where the assistant reaches the governor"),
                arg("--sys", default="/sys", help="root of the thermal and hwmon sensors"),
                arg("--proc", default="/proc", help="root of the pressure stall information"),
                arg("--interval", type=float, default=1.0, help="seconds between samples"),
                arg("--client-user", action="append", default=[], help="a user that may talk to the socket")),
    "history": verb(cmd_history, "print the kept samples and decisions as JSON"),
}
COMMON = (arg("--state", default=facts.GOVERNOR_STATE, help="the governor's state directory (its history)"),)


def main(argv: list[str] | None = None) -> None:
    args = parser("paladin-governor", __doc__, VERBS, COMMON).parse_args(argv)
    logs.setup()
    try:
        VERBS[args.verb].run(args)
    except OSError as err:
        log.error("%s", err)
        raise SystemExit(1) from None
