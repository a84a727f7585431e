"""`paladin-update`: signed A/B updates on the box (root).  The verbs are the units' entry points."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import sys
from pathlib import Path

from .. import command, config as config_module
from .assess import assess, attempt, boot_failed
from .install import install, run_service
from .progress import UpdateError, write_json
from .slots import kernels, machine_arch, slots
from .status import STATE, progress, read_state, running_version


def status(state: Path = STATE) -> dict:
    return {"running": running_version(), "arch": machine_arch(), "slots": slots(), "kernels": kernels(),
            "update": progress(state), "attempts": read_state(state / "attempts.json", [])}


def save_snapshot(state: Path = STATE) -> None:
    """status() for the web UI, which may read neither the partition table nor the ESP."""
    with contextlib.suppress(UpdateError, command.CommandError, OSError):
        write_json(state / "snapshot.json", status(state))


def _print_status(data: dict) -> None:
    print(f"running {data['running']} ({data['arch']})")
    for slot in data["slots"]:
        mark = "booted" if slot["booted"] else ""
        print(f"  {slot['kind']:6} {slot['device']:12} {slot['label'] or '-':28} {mark}")
    for k in data["kernels"]:
        tries = "" if k["tries_left"] is None else f" (tries left {k['tries_left']}, done {k['tries_done'] or 0})"
        print(f"  uki    {k['file']:40} {k['state']}{tries}{' selected' if k['selected'] else ''}")
    update = data["update"]
    print(f"last update: {update.get('phase')} {update.get('version') or ''} {update.get('error') or ''}".rstrip())
    for past in data["attempts"][-3:]:
        print(f"boot of {past['version']}: {past['result']}: {past['reason']}")


def cmd_status(args) -> None:
    if args.save:
        save_snapshot()
        return
    data = status()
    print(json.dumps(data, indent=1)) if args.json else _print_status(data)


def cmd_install(args) -> None:
    if Path(args.source).is_file():  # an offline bundle named by the root user at the console
        with open(args.source, "rb") as bundle:
            print(f"installed {install(bundle, reboot=args.reboot)}")
    else:
        print(f"installed {install(args.source, reboot=args.reboot)}")


def cmd_run(args) -> None:
    run_service(config_module.load())


def cmd_assess(args) -> None:
    try:
        config = config_module.load()
    except config_module.ConfigError as err:
        attempt(STATE, "failed", f"the configuration is invalid: {err}")
        raise
    print(f"boot assessment: {assess(config)}")


def cmd_boot_failed(args) -> None:
    boot_failed()  # needs no configuration: it must work when the configuration is what broke


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", action="store_true", help="write it where the web UI reads it")


def _install_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="an http(s) repository URL, a repository directory or a bundle file")
    p.add_argument("--reboot", action="store_true", help="reboot into the new version when installed")


# verb: (handler, help, arguments, whether the web UI's snapshot is refreshed afterwards)
VERBS = {
    "status": (cmd_status, "slots, versions, which is booted and good, the last attempts", _status_args, False),
    "install": (cmd_install, "verify and install the newest release from a URL, directory or bundle",
                _install_args, True),
    "run": (cmd_run, "paladin-update.service: handle the web UI's request or the automatic update", None, True),
    "assess": (cmd_assess, "paladin-health.service: check that this boot's assistant answers", None, True),
    "boot-failed": (cmd_boot_failed, "record a failed assessment and reboot while tries are left", None, True),
}


def main(argv: list[str] | None = None) -> None:
    top = argparse.ArgumentParser(prog="paladin-update", description=__doc__)
    sub = top.add_subparsers(dest="verb", required=True)
    for name, (handler, help, arguments, _) in VERBS.items():
        p = sub.add_parser(name, help=help)
        if arguments:
            arguments(p)
    args = top.parse_args(argv)
    handler, _, _, snapshot_after = VERBS[args.verb]
    try:
        if snapshot_after:
            atexit.register(save_snapshot)  # whatever happened, the web UI sees the state it left
        handler(args)
    except (UpdateError, config_module.ConfigError, command.CommandError, OSError) as err:
        print(f"paladin-update: {err}", file=sys.stderr)
        raise SystemExit(1) from None
