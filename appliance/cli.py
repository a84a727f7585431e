"""`paladin`: the box's command line (service, tokens, models, configuration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import config as config_module, db as database, logs, store, tokens
from .config import ConfigError
from .errors import ServiceError
from .verbs import arg, parser, verb


def _load(args) -> config_module.Config:
    overrides: dict = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    if getattr(args, "listen", None):
        overrides.setdefault("server", {})["listen"] = args.listen
    return config_module.load(Path(args.config) if args.config else config_module.SYSTEM_CONFIG, overrides)


def cmd_serve(args, config) -> None:
    from .web.server import serve  # gunicorn only where it is needed

    serve(config, Path(args.model).resolve() if args.model else store.configured_model(config))


def cmd_token(args, config) -> None:
    db = database.connect(config.database_path)
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
    if args.action == "list":
        for tier in store.catalog():
            present = (config.models_path / tier.file).exists()
            print(f"{tier.name}\t{tier.size / 1e6:.0f} MB\tneeds {tier.ram / 1e6:.0f} MB RAM\t"
                  f"{'installed' if present else 'not installed'}")
        return
    if args.action == "download":
        path = store.download_tier(args.target, config.models_path, _progress)
    else:
        path = store.import_file(Path(args.target), config.models_path, _progress)
    print(f"\n{path}")


def cmd_config(args, config) -> None:
    if args.action == "schema":
        print(json.dumps(config_module.json_schema(), indent=2))
    elif args.action == "docs":
        print(config_module.markdown(), end="")
    else:
        print(json.dumps(config_module.to_dict(config), indent=2))


VERBS = {
    "serve": verb(cmd_serve, "run the assistant service in the foreground",
                  arg("--model", help="GGUF model to serve (overrides the configured one)"),
                  arg("--listen", help="HOST:PORT to bind (overrides server.listen)")),
    "token": verb(cmd_token, "manage API tokens",
                  arg("action", choices=["create", "revoke", "list"]), arg("--name", default="default")),
    "model": verb(cmd_model, "list, download or import models", arg("action", choices=["list", "download", "import"]),
                  arg("target", nargs="?", help="tier name (download) or file path (import)")),
    "config": verb(cmd_config, "show the effective configuration, its JSON Schema or its reference",
                   arg("action", choices=["show", "schema", "docs"])),
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
