"""The firewall helper (root): loads the ruleset at boot, before any network interface is up, and applies the
owner's firewall and SSH settings that the assistant hands over through the request channel.

The box is never without a firewall: a ruleset is loaded only after `nft --check` accepted it, the one
that loaded last is kept (`ruleset.nft`), and when the configuration is unusable that one, or else the
defaults', is loaded instead and the helper fails loudly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import yaml

from .. import channel, command, config as config_module, facts, files
from ..command import CommandError
from ..config import Config, ConfigError
from ..layout import FirewallState
from . import rules

log = logging.getLogger(__name__)
SSH_UNIT = "ssh.service"
TIME_UNIT = "systemd-timesyncd.service"
TOOL_SECONDS = 60  # systemctl's and ssh-keygen's deadline


class FirewallError(RuntimeError):
    """The owner's settings or the configuration could not be applied; what is loaded is named."""


def checked_ruleset(config: Config) -> str:
    """The checked ruleset for `config`; in privacy mode the update server's name is resolved now."""
    endpoint = rules.update_endpoint(config) if config.firewall.privacy else None
    ruleset = rules.render(config, rules.resolve(endpoint[0]) if endpoint else [])
    rules.check(ruleset)
    return ruleset


def _load(ruleset: str, state: FirewallState) -> None:
    rules.load(ruleset)
    files.write(state.last_good, ruleset.encode(), mode=0o600)


def _sync_ssh_key(config: Config, state: FirewallState) -> bool:
    """The authorized key file exists exactly while SSH is on (ssh.service starts only then); True if it
    changed."""
    wanted = f"{config.firewall.ssh_key}\n".encode() if config.firewall.ssh else None
    present = state.authorized_keys.read_bytes() if state.authorized_keys.exists() else None
    if wanted == present:
        return False
    if wanted is None:
        state.authorized_keys.unlink()
    else:
        files.write(state.authorized_keys, wanted, mode=0o644)
    return True


def ensure_host_key(state: FirewallState) -> None:
    """SSH's host key, made on this box at its first boot (never in the image), so the owner can compare
    its fingerprint on the Network access page with what ssh shows the first time."""
    public = state.host_key_public
    if not state.host_key.exists():
        state.ssh.mkdir(mode=0o755, exist_ok=True)
        state.ssh.chmod(0o755)  # the public half is for the assistant's page to show
        partial = files.partial(state.host_key)
        for stale in (partial, partial.with_name(partial.name + ".pub")):
            stale.unlink(missing_ok=True)
        command.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", facts.MDNS_NAME, "-f", partial],
                    timeout=TOOL_SECONDS)
        files.commit(partial.with_name(partial.name + ".pub"), public)
        files.commit(partial, state.host_key)
    if public.exists():
        public.chmod(0o644)  # ssh-keygen wrote it under this unit's umask (0077)


def boot(load_config, state: FirewallState) -> None:
    """Load the configured ruleset; if the configuration is unusable, the last good one (or the defaults')."""
    try:
        config = load_config()
        ruleset = checked_ruleset(config)
    except (ConfigError, CommandError, OSError) as err:
        if state.last_good.exists():
            fallback, which = state.last_good.read_text(), "the last good ruleset"
        else:
            fallback, which = rules.render(Config()), "the default ruleset"
        rules.load(fallback)
        raise FirewallError(f"the firewall configuration is unusable, so {which} is loaded: {err}") from None
    _load(ruleset, state)
    _sync_ssh_key(config, state)
    ensure_host_key(state)
    log.info("firewall loaded: %s from the LAN (%s)%s", ", ".join(f"{k} {v}" for k, v in rules.services(config).items()),
             config.firewall.lan, "; privacy mode" if config.firewall.privacy else "")


def _systemctl(*argv: str) -> None:
    command.run(["systemctl", *argv], timeout=TOOL_SECONDS)


def _record(state: FirewallState, ok: bool, message: str) -> None:
    files.write(state.outcome, json.dumps({"time": time.time(), "ok": ok, "message": message}).encode(), mode=0o644)


def apply_request(load_config, data_dir: Path, state: FirewallState) -> None:
    """Take the assistant's pending firewall request, validate it, and apply it: settings, ruleset, SSH, network
    time.  A request that does not fit changes nothing; the outcome is recorded for the web UI either way."""
    try:
        request = channel.take(data_dir, "firewall")
        if request is None:
            return
        _apply(load_config, dataclasses.asdict(request), state)
    except (channel.RequestError, ConfigError, CommandError, OSError) as err:
        _record(state, False, str(err))
        raise FirewallError(f"the firewall settings were not changed: {err}") from None
    _record(state, True, "applied")


def _apply(load_config, wanted: dict, state: FirewallState) -> None:
    config_module.check_firewall(wanted, "the owner's firewall request")
    before = load_config()
    previous = state.settings.read_bytes() if state.settings.exists() else None
    files.write(state.settings, yaml.safe_dump(wanted, sort_keys=True).encode(), mode=0o644)
    try:
        config = load_config()
        _load(checked_ruleset(config), state)
    except BaseException:
        # Nothing changed on the box yet: the settings on disk go back to what is loaded.
        if previous is None:
            state.settings.unlink()
        else:
            files.write(state.settings, previous, mode=0o644)
        raise
    if _sync_ssh_key(config, state) or config.firewall.ssh != before.firewall.ssh:
        _systemctl("restart" if config.firewall.ssh else "stop", SSH_UNIT)
    if config.network_time != before.network_time:
        # Its start condition reads network_time: a restart starts it or leaves it stopped.
        _systemctl("restart" if config.network_time else "stop", TIME_UNIT)
    log.info("firewall settings applied: LAN %s, privacy %s, SSH %s", config.firewall.lan,
             "on" if config.firewall.privacy else "off", "on" if config.firewall.ssh else "off")
