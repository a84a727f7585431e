"""`paladin`: the box's command line (service, tokens, models, configuration)."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import pwd
import sys
from pathlib import Path

from . import catalog, command, config as config_module, db as database, facts, firstboot, logs, store, tokens
from .config import ConfigError, schema
from .errors import ServiceError
from .verbs import arg, parser, verb


def _load(args) -> config_module.Config:
    overrides = schema.overrides(args)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    return config_module.load(Path(args.config) if args.config else config_module.SYSTEM_CONFIG, overrides)


def cmd_serve(args, config) -> None:
    from .backup import swap
    from .web.server import serve  # gunicorn only where it is needed

    if swap.finish(config.data):  # a restore the owner confirmed: in place before anything opens the data
        config = _load(args)
    firstboot.prepare(config)  # where no first-boot unit ran (a developer's machine): the same secrets
    try:
        serve(config, Path(args.model).resolve() if args.model else store.configured_model(config))
    except SystemExit:
        if not swap.committed(config.data):
            raise
        # The owner confirmed a restore and the worker stopped gunicorn: start again, as the same process
        # (systemd's main PID), from the top.
        os.execv(sys.executable, sys.orig_argv)


def _on_the_box(config) -> bool:
    """Root on the box's console: the data directory belongs to the service's user."""
    try:
        return os.geteuid() == 0 and config.data_path.stat().st_uid == pwd.getpwnam(facts.SERVICE_USER).pw_uid
    except (KeyError, FileNotFoundError):
        return False


def _as_service_user(verb: list[str], config, stdin: str | None = None) -> bool:
    """Run `paladin VERB` again as the service's user when started as root on the box's console (what it
    writes to the data partition must stay the service's); False elsewhere, to run it here."""
    if not _on_the_box(config):
        return False
    print(command.run(["runuser", "-u", facts.SERVICE_USER, "--", sys.argv[0], *verb, "--data-dir", config.data_dir],
                      stdin=stdin), end="")
    return True


def cmd_backup(args, config) -> None:
    from .backup import contents  # the age and zstd libraries only where a backup is made
    from .backup.archive import BackupError

    if args.action == "list":
        for made in contents.listing(config.data):
            print(f"{made.path}\t{made.size}\t{made.key}")
        return
    if args.action == "restore":
        return _restore(args, config)
    if args.action == "scheduled" and not config.backup.schedule:
        print("paladin: scheduled backups are off (backup.schedule)")
        return
    if not _as_service_user(["backup", args.action], config):
        try:
            print(contents.attempt(config).path)
        except BackupError as err:
            raise SystemExit(f"paladin: {err}") from None


def _restore(args, config) -> None:
    """On the console: check a backup file whole (the key on stdin, or typed; with --sealed-key, that key's
    passphrase), and with --yes put it in place by restarting the assistant, as the Backups page does."""
    from .backup import contents, keys, restore, swap
    from .backup.archive import BackupError

    if not args.target:
        raise SystemExit("paladin: backup restore needs the backup file")
    asked = "passphrase of the sealed key: " if args.sealed_key else "recovery key: "
    typed = getpass.getpass(asked) if sys.stdin.isatty() else sys.stdin.readline()
    try:
        if args.sealed_key:
            with open(args.sealed_key, encoding="utf-8", errors="replace") as sealed:
                key = keys.unseal(sealed.read(keys.MAX_SEALED + 1), typed.rstrip("\n"))
        else:
            key = keys.identity(typed)
    except (keys.BadKey, OSError) as err:
        raise SystemExit(f"paladin: {err}") from None
    path = Path(args.target).resolve()
    # Checked and staged as the service's user, whose files they become.
    if _as_service_user(["backup", "restore", str(path), *(["--yes"] if args.yes else [])], config, key + "\n"):
        if args.yes:
            command.run(["systemctl", "restart", "paladin.service"])
            print("paladin: the assistant restarted and put the restore in place")
        return
    try:
        with path.open("rb") as source:
            preview = restore.stage(config.data, source, key, needs=contents.needs_key(path.name))
    except (BackupError, OSError) as err:
        raise SystemExit(f"paladin: nothing was restored: {err}") from None
    print(json.dumps(preview, indent=1))
    if not args.yes:
        swap.discard(config.data)
        print("paladin: the backup is whole and opens with this key; run again with --yes to restore it")
        return
    swap.commit(config.data)
    print("paladin: confirmed; the assistant puts it in place when it starts next")


def cmd_firstboot(args, config) -> None:
    firstboot.prepare(config)
    firstboot.announce(config)


def cmd_setup(args, config) -> None:
    if not _as_service_user(["setup", "reset"], config):
        firstboot.prepare(config, new_code=True)
        firstboot.announce(config)


def cmd_factory_reset(args, config) -> None:
    if not args.yes:
        raise SystemExit("paladin: factory-reset deletes the owner's account, conversations, tokens, settings and "
                         "this box's keys (models stay); run it again with --yes to do it")
    if _on_the_box(config):  # the service must not hold the database while it goes
        command.run(["systemctl", "stop", "paladin.service"])
        try:
            _as_service_user(["factory-reset", "--yes"], config)
        finally:
            command.run(["systemctl", "start", "paladin.service"])
        return
    firstboot.factory_reset(config)
    cmd_firstboot(args, config)


def cmd_token(args, config) -> None:
    db = database.connect(config.data.database)
    if args.action == "create":
        print(f"token '{args.name}' created; it is shown only this once:", file=sys.stderr)
        print(tokens.create(db, args.name))
    elif args.action == "revoke":
        if not tokens.revoke(db, args.name):
            raise SystemExit(f"paladin: no live token named '{args.name}'")
        print(f"token '{args.name}' revoked")
    else:
        for row in tokens.listing(db):
            print(f"{row['name']}\t{'revoked' if row['revoked'] else 'live'}")


def _progress(done: int, total: int) -> None:
    print(f"\r{done / 1e6:8.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)


def cmd_model(args, config) -> None:
    ladder = catalog.of(config)
    if args.action == "list":
        for tier in ladder.tiers:
            present = (config.data.models / tier.file).exists()
            print(f"{tier.name}\t{tier.ollama}\t{tier.size / 1e6:.0f} MB\tneeds "
                  f"{tier.ram(config.inference.context_tokens) / 1e6:.0f} MB RAM\t{tier.licence}\t"
                  f"{'installed' if present else 'not installed'}")
        return
    if args.action == "download":
        tier = ladder.named(args.target)
        if tier is None:
            raise store.StoreError(ladder.unknown(args.target))
        path = store.download_tier(tier, config.data.models, _progress)
    else:
        path = store.import_file(Path(args.target), config.data.models, ladder, _progress)
    print(f"\n{path}")


def cmd_config(args, config) -> None:
    if args.action == "schema":
        print(json.dumps(config_module.json_schema(config_module.Config), indent=2))
    elif args.action == "docs":
        print(config_module.reference(), end="")
    elif args.action == "get":
        value = config
        for part in (args.key or "").split("."):
            # Fields and the derived values (network_time), never methods or private names.
            if part.startswith("_") or callable(getattr(value, part, None)) or not hasattr(value, part):
                raise SystemExit(f"paladin: config get: no key {args.key!r} ('paladin config show' lists them)")
            value = getattr(value, part)
        print(json.dumps(config_module.to_dict(value) if dataclasses.is_dataclass(value) else value))
    else:
        print(json.dumps(config_module.to_dict(config), indent=2))


VERBS = {
    "serve": verb(cmd_serve, "run the assistant service in the foreground",
                  arg("--model", help="GGUF model to serve (overrides the configured one)"),
                  *schema.options(config_module.ServerConfig, "server", ("listen", "https", "redirect"))),
    "backup": verb(cmd_backup, "make a verified, encrypted backup now (or the daily one, if on), list them, or "
                               "restore one (the recovery key on stdin)",
                   arg("action", choices=["now", "scheduled", "list", "restore"]),
                   arg("target", nargs="?", help="with restore: the backup file"),
                   arg("--yes", action="store_true", help="with restore: really put it in place"),
                   arg("--sealed-key", metavar="FILE", help="with restore: the recovery key sealed with a passphrase "
                       "(recovery-key-XXXX-XXXX.age); its passphrase on stdin")),
    "firstboot": verb(cmd_firstboot, "make the device's missing secrets and setup code; show how to reach the box"),
    "setup": verb(cmd_setup, "on the box's console: a new setup code, unlocking the wizard after wrong codes",
                  arg("action", choices=["reset"])),
    "factory-reset": verb(cmd_factory_reset, "on the box's console: delete the owner's account and data and the "
                                             "box's keys, so the setup wizard runs again (models stay)",
                          arg("--yes", action="store_true", help="really do it")),
    "token": verb(cmd_token, "manage API tokens",
                  arg("action", choices=["create", "revoke", "list"]), arg("--name", default="default")),
    "model": verb(cmd_model, "list, download or import models", arg("action", choices=["list", "download", "import"]),
                  arg("target", nargs="?", help="tier name (download) or file path (import)")),
    "config": verb(cmd_config, "show the effective configuration (or one key of it), its JSON Schema or its reference",
                   arg("action", choices=["show", "get", "schema", "docs"]),
                   arg("key", nargs="?", help="with get: a dotted key, e.g. device.time_sync, or network_time")),
}
COMMON = (arg("--config", help=f"system configuration file (default {config_module.SYSTEM_CONFIG})"),
          arg("--data-dir", help="data directory (overrides data_dir)"))


def main(argv: list[str] | None = None) -> None:
    logs.setup()
    args = parser("paladin", __doc__, VERBS, COMMON).parse_args(argv)
    if getattr(args, "action", None) in ("download", "import") and not args.target:
        raise SystemExit(f"paladin: model {args.action} needs a target")
    try:
        config = _load(args)
        VERBS[args.verb].run(args, config)
    except ConfigError as err:
        raise SystemExit(f"paladin: configuration error: {err}") from None
    except (store.StoreError, database.DatabaseError, ServiceError) as err:
        raise SystemExit(f"paladin: {err}") from None
