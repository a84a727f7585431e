"""`paladin`: the box's command line (service, tokens, models, configuration)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import config as config_module, db as database, store, tokens
from .config import ConfigError


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


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="GGUF model to serve (overrides the configured one)")
    p.add_argument("--listen", help="HOST:PORT to bind (overrides server.listen)")


def _token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["create", "revoke", "list"])
    p.add_argument("--name", default="default")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "download", "import"])
    p.add_argument("target", nargs="?", help="tier name (download) or file path (import)")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "schema", "docs"],
                   help="the effective configuration, its JSON Schema, or its reference as Markdown")


VERBS = {
    "serve": (cmd_serve, "run the assistant service in the foreground", _serve_args),
    "token": (cmd_token, "manage API tokens", _token_args),
    "model": (cmd_model, "list, download or import models", _model_args),
    "config": (cmd_config, "show the effective configuration, its JSON Schema or its reference", _config_args),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="paladin", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    for name, (handler, help, arguments) in VERBS.items():
        p = sub.add_parser(name, help=help)
        p.set_defaults(handler=handler)
        p.add_argument("--config", help=f"system configuration file (default {config_module.SYSTEM_CONFIG})")
        p.add_argument("--data-dir", help="data directory (overrides data_dir)")
        arguments(p)
    return top


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    if getattr(args, "action", None) in ("download", "import") and not args.target:
        raise SystemExit(f"paladin: model {args.action} needs a target")
    try:
        config = _load(args)
        args.handler(args, config)
    except ConfigError as err:
        raise SystemExit(f"paladin: configuration error: {err}") from None
    except (store.StoreError, database.DatabaseError) as err:
        raise SystemExit(f"paladin: {err}") from None
