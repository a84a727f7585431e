"""`paladin-firewall`: the box's nftables firewall (root): load it at boot, apply the owner's requests, show it."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from .. import config as config_module, logs
from ..command import CommandError
from ..config import Config, ConfigError
from ..verbs import arg, parser, verb
from . import helper, rules
from ..layout import FirewallState
from .state import outcome, settings

log = logging.getLogger(__name__)


def _loader(args, state: FirewallState):
    overrides = {"data_dir": str(Path(args.data_dir).resolve())} if args.data_dir else {}
    return functools.partial(config_module.load, Path(args.config), overrides, state.settings)


def cmd_load(args, state: FirewallState) -> None:
    helper.boot(_loader(args, state), state)


def cmd_request(args, state: FirewallState) -> None:
    load = _loader(args, state)
    helper.apply_request(load, load().data_path, state)


def cmd_render(args, state: FirewallState) -> None:
    """Exactly what `load` would load: in privacy mode with the update server's addresses resolved now."""
    print(rules.render(Config()) if args.defaults else helper.checked_ruleset(_loader(args, state)()), end="")


def cmd_show(args, state: FirewallState) -> None:
    print(json.dumps({"settings": settings(state), "outcome": outcome(state)}, indent=2))


VERBS = {
    "load": verb(cmd_load, "load the configured ruleset (at boot; the last good one if the configuration is unusable)"),
    "request": verb(cmd_request, "apply the owner's pending firewall request from the web UI"),
    "render": verb(cmd_render, "print the ruleset the configuration makes",
                   arg("--defaults", action="store_true", help="the built-in defaults' ruleset")),
    "show": verb(cmd_show, "print the owner's firewall settings and the last request's outcome"),
}
COMMON = (arg("--config", default=str(config_module.SYSTEM_CONFIG), help="system configuration file"),
          arg("--data-dir", help="data directory (overrides data_dir)"),
          arg("--state", default=str(FirewallState().root), help="the helper's state directory"))


def main(argv: list[str] | None = None) -> None:
    args = parser("paladin-firewall", __doc__, VERBS, COMMON).parse_args(argv)
    logs.setup()
    try:
        VERBS[args.verb].run(args, FirewallState(Path(args.state)))
    except (helper.FirewallError, ConfigError, CommandError, OSError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None
