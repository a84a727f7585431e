"""`paladin-update`: signed A/B updates on the box (root).  The verbs are the units' entry points; the
unprivileged fetcher has its own (`paladin-update-fetch`, fetcher.py)."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
from pathlib import Path

from .. import command, config as config_module, facts, logs
from ..layout import UpdateState
from ..verbs import arg, parser, verb
from .assess import assess, attempt, boot_failed
from .install import install, run_service
from .progress import UpdateError, write_json
from .loader import loader
from .slots import machine_arch, slots
from .status import progress, read_state, running_version

log = logging.getLogger("paladin-update")


def status(state: UpdateState = UpdateState()) -> dict:
    boot = loader()
    return {"running": running_version(), "arch": machine_arch(), "slots": slots(), "kernels": boot.entries(),
            "refusal": boot.refusal(), "update": progress(state), "attempts": read_state(state.attempts, [])}


def save_snapshot(state: UpdateState = UpdateState()) -> None:
    """status() for the web UI, which may read neither the partition table nor the ESP."""
    with contextlib.suppress(UpdateError, command.CommandError, OSError):
        write_json(state.snapshot, status(state))


def _print_status(data: dict) -> None:
    print(f"running {data['running']} ({data['arch']})")
    for slot in data["slots"]:
        mark = "booted" if slot["booted"] else ""
        print(f"  {slot['kind']:6} {slot['device']:12} {slot['label'] or '-':28} {mark}")
    for k in data["kernels"]:
        tries = "" if k.get("tries_left") is None else f" (tries left {k['tries_left']}, done {k['tries_done'] or 0})"
        print(f"  boot   {k['file']:40} {k['state']}{tries}{' selected' if k['selected'] else ''}")
    update = data["update"]
    print(f"last update: {update.get('phase')} {update.get('version') or ''} {update.get('error') or ''}".rstrip())
    for past in data["attempts"][-3:]:
        print(f"boot of {past['version']}: {past['result']}: {past['reason']}")


def _state(args) -> UpdateState:
    return UpdateState(Path(args.state))


def cmd_status(args) -> None:
    if args.save:
        save_snapshot(_state(args))
        return
    data = status(_state(args))
    print(json.dumps(data, indent=1)) if args.json else _print_status(data)


def cmd_install(args) -> None:
    if Path(args.source).is_file():  # an offline bundle named by the root user at the console
        with open(args.source, "rb") as bundle:
            print(f"installed {install(bundle, state=_state(args), reboot=args.reboot)}")
    else:
        print(f"installed {install(args.source, state=_state(args), reboot=args.reboot)}")


def cmd_run(args) -> None:
    run_service(config_module.load(), _state(args))


def cmd_assess(args) -> None:
    try:
        config = config_module.load()
    except config_module.ConfigError as err:
        attempt(_state(args), "failed", f"the configuration is invalid: {err}")
        raise
    print(f"boot assessment: {assess(config, _state(args))}")


def cmd_commit(args) -> None:
    loader().commit()


def cmd_boot_failed(args) -> None:
    boot_failed(_state(args))  # needs no configuration: it must work when the configuration is what broke


VERBS = {
    "status": verb(cmd_status, "slots, versions, which is booted and good, the last attempts",
                   arg("--json", action="store_true"),
                   arg("--save", action="store_true", help="write it where the web UI reads it")),
    "install": verb(cmd_install, "verify and install the newest release from a URL, directory or bundle",
                    arg("source", help="an http(s) repository URL, a repository directory or a bundle file"),
                    arg("--reboot", action="store_true", help="reboot into the new version when installed")),
    "run": verb(cmd_run, "paladin-update.service: handle the web UI's request or the automatic update"),
    "assess": verb(cmd_assess, "paladin-health.service: check that this boot's assistant answers"),
    "commit": verb(cmd_commit, "keep this trial boot as the default once its assessment passed (a Raspberry "
                   "Pi's tryboot; on UEFI boxes systemd-bless-boot does it)"),
    "boot-failed": verb(cmd_boot_failed, "record a failed assessment and reboot while tries are left"),
}
COMMON = (arg("--state", default=facts.UPDATE_STATE, help="the updater's state directory"),)
# Whatever these did, the web UI must see the state they left.
SNAPSHOT_AFTER = ("install", "run", "assess", "commit", "boot-failed")


def main(argv: list[str] | None = None) -> None:
    args = parser("paladin-update", __doc__, VERBS, COMMON).parse_args(argv)
    logs.setup()
    try:
        if args.verb in SNAPSHOT_AFTER:
            atexit.register(save_snapshot, _state(args))
        VERBS[args.verb].run(args)
    except (UpdateError, config_module.ConfigError, command.CommandError, OSError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None
