"""Where the configuration comes from, last one winning: the defaults (settings.py), the image's system
file, the firewall helper's settings (the `firewall` section, which only the helper writes), the owner's
file on the data partition and the command line; and how the owner's changes are kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .. import facts, files
from ..layout import DataDir, FirewallState
from .schema import ConfigError, merge, reference_rows
from .settings import Config, FirewallConfig

SYSTEM_CONFIG = Path(facts.SYSTEM_CONFIG)
FIREWALL_SETTINGS = FirewallState().settings
SYSTEM_ONLY = frozenset({"data_dir", "paths"})


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return raw if raw is not None else {}


def load(system_file: Path | None = SYSTEM_CONFIG, overrides: dict | None = None,
         firewall_file: Path = FIREWALL_SETTINGS) -> Config:
    """Defaults, then the system file, the firewall helper's settings, the owner's file on the data
    partition, then overrides.

    `overrides` (from the command line) are applied first to find the data
    directory and again last so that they win.
    """
    config = Config()
    if system_file is not None and system_file.exists():
        config = merge(config, read_yaml(system_file), str(system_file))
    config = dataclasses.replace(config, firewall=read_firewall(firewall_file, config.firewall))
    overrides = overrides or {}
    config = merge(config, overrides, "command line")
    owner_file = config.data.owner_config
    if owner_file.exists():
        config = merge(config, check_owner(read_yaml(owner_file), str(owner_file), config), str(owner_file))
        config = merge(config, overrides, "command line")
    return config


def check_owner(owner: object, source: str, base: Config = Config()) -> object:
    """The owner's file as read (from the data partition, or a backup about to be restored), refused with
    the file and the key when it sets what is not the owner's to set or a value that is not allowed."""
    if isinstance(owner, dict) and "firewall" in owner:
        # The assistant writes this file: what reaches the box, and SSH as root, is the helper's to change.
        raise ConfigError(f"{source}: firewall: not allowed here (the firewall helper keeps these "
                          f"settings in {FIREWALL_SETTINGS})")
    if isinstance(owner, dict) and (placed := sorted(owner.keys() & SYSTEM_ONLY)):
        # Root's helpers read this file too: no path of theirs may come from what the assistant writes.
        raise ConfigError(f"{source}: {placed[0]}: not allowed here (the image's {SYSTEM_CONFIG} or the "
                          "command line sets where things are)")
    merge(base, owner, source)
    return owner


def check_firewall(raw: dict, source: str, base: FirewallConfig = FirewallConfig()) -> FirewallConfig:
    """The owner's firewall settings (the helper's file, or a request from the web UI) over `base`, checked
    alone and together: SSH needs a key, as there are no passwords."""
    checked = merge(base, raw, source, "firewall.")
    if checked.ssh and not checked.ssh_key:
        raise ConfigError(f"{source}: firewall.ssh_key: SSH needs the owner's public key, as the box has no "
                          "passwords to log in with: paste the line from ~/.ssh/id_ed25519.pub")
    return checked


def read_firewall(path: Path, base: FirewallConfig = FirewallConfig()) -> FirewallConfig:
    """The firewall helper's settings file over `base` (just `base` while there is none)."""
    return check_firewall(read_yaml(path), str(path), base) if path.exists() else base


def parse(raw: dict, source: str = "config") -> Config:
    return merge(Config(), raw, source)


def _deep_update(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _deep_update(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def save_owner(data_dir: Path, changes: dict) -> Config:
    """Merge `changes` into the owner's file on the data partition, durably, if the result is valid;
    returns what that file alone configures (over the defaults)."""
    owner_file = DataDir(Path(data_dir)).owner_config
    if kept := sorted(changes.keys() & (SYSTEM_ONLY | {"firewall"})):
        raise ConfigError(f"{owner_file}: {kept[0]}: not the owner's file to set")
    merged = _deep_update(read_yaml(owner_file) if owner_file.exists() else {}, changes)
    checked = merge(Config(), merged, str(owner_file))
    files.write(owner_file, yaml.safe_dump(merged, sort_keys=True).encode(), mode=0o600)
    return checked


class Live:
    """The running service's configuration: the one it started with, and the owner's changes since, each
    saved durably first (`save_owner`) and then applied."""

    def __init__(self, config: Config):
        self.config = config

    def save(self, changes: dict) -> Config:
        save_owner(self.config.data_path, changes)
        self.config = merge(self.config, changes, "the owner's change")
        return self.config


def reference() -> str:
    """The configuration reference (docs/configuration.md), from the same table that validates it."""
    return ("# Configuration\n\n<!-- generated by `paladin config docs` from appliance/config/; "
            "a test keeps it current -->\n\n"
            "Values come, last one winning, from the defaults below, the image's `/etc/paladin/paladin.yaml`, "
            "the firewall helper's settings (`firewall.*`, kept in "
            f"`{FIREWALL_SETTINGS}`: only the helper writes them, no other file may set them), "
            "the owner's `<data_dir>/config.yaml` and the command line. The owner's file is written by the "
            "assistant and read by root's helpers too, so it may set neither `data_dir` nor `paths.*` (where "
            "things are: the image's file or the command line says that).\n\n"
            "| key | type | default | allowed | what |\n| --- | --- | --- | --- | --- |\n" + reference_rows(Config))
