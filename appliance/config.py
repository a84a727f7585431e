"""The box's one typed configuration.

Every part of the appliance reads a frozen `Config`.  Values come, last one
winning, from the defaults below, the image's `/etc/paladin/paladin.yaml`, the
owner's choices kept on the data partition (`<data_dir>/config.yaml`, written
by the setup wizard) and the command line.  The field metadata is the single
table that drives parsing, validation messages and the JSON Schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml

from . import facts, files
from .access import lan_problem, ssh_key_problem

SYSTEM_CONFIG = Path(facts.SYSTEM_CONFIG)
OWNER_CONFIG_NAME = "config.yaml"
FIREWALL_SETTINGS = Path(facts.FIREWALL_STATE) / "settings.yaml"


class ConfigError(ValueError):
    """A configuration value is unusable; the message names key, value and what is allowed."""


def setting(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
            pattern: str | None = None, allowed: str | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A field with its validation: range, pattern, and `check` (returns what is wrong, or None)."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum,
                                            "pattern": pattern, "allowed": allowed, "check": check})


def section(cls: type) -> Any:
    return field(default_factory=cls)


LISTEN_PATTERN = r"^(|(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5})$"
LISTEN_ALLOWED = "HOST:PORT, e.g. 0.0.0.0:443, or empty for none"


def _port_problem(listen: str) -> str | None:
    return None if not listen or 0 < int(listen.rpartition(":")[2]) < 65536 else "has no valid port (allowed: 1 to 65535)"


def listener(default: str, help: str) -> Any:
    return setting(default, help, pattern=LISTEN_PATTERN, allowed=LISTEN_ALLOWED, check=_port_problem)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ServerConfig:
    https: str = listener(f"0.0.0.0:{facts.HTTPS_PORT}", "HTTPS listener, HOST:PORT: the web UI, the setup wizard "
                                                          "and both APIs, with the box's own certificate.")
    redirect: str = listener(f"0.0.0.0:{facts.REDIRECT_PORT}", "Plain-HTTP listener that only redirects to HTTPS "
                                                               "(what a browser tries first).")
    listen: str = listener(f"0.0.0.0:{facts.WEB_PORT}", "Plain-HTTP listener for LAN API clients that cannot do "
                                                        "TLS: the OpenAI and Ollama APIs with a token, and /health; "
                                                        "web pages there redirect to HTTPS.  Empty turns it off "
                                                        "(tokens then never cross the LAN in clear text).")
    max_body_bytes: int = setting(1_048_576, "Largest accepted request body.",
                                  minimum=1024, maximum=64 * 1_048_576)
    graceful_timeout: int = setting(20, "Seconds in-flight streams get to finish on shutdown.", minimum=1, maximum=600)
    header_seconds: int = setting(10, "Seconds a client has to send a request's headers (and, once more, "
                                      "its body) before the box hangs up: slow clients cannot hold connections.",
                                  minimum=1, maximum=300)
    max_connections: int = setting(128, "Open connections and requests at once; beyond them 503 at once.",
                                   minimum=8, maximum=4096)
    connections_per_client: int = setting(32, "Connections one client address may hold at once; beyond them it is "
                                              "hung up on, so one device cannot take every slot.", minimum=1, maximum=4096)
    requests_per_second: int = setting(20, "Requests one client address may send per second, on average; "
                                           "beyond it (and its burst) the box answers 429 with Retry-After. "
                                           "0: no limit.", minimum=0, maximum=10000)
    request_burst: int = setting(60, "Requests one client address may send at once before "
                                     "requests_per_second applies.", minimum=1, maximum=100000)
    auth_failures_per_minute: int = setting(10, "Wrong API tokens one client address may present per minute "
                                                "(all at once, then one every 60/N seconds); beyond them its "
                                                "requests that need a token get 429, even with the right one. "
                                                "0: no limit.", minimum=0, maximum=1000)

    session_hours: int = setting(168, "Hours an owner's browser session lasts without use before the owner logs "
                                      "in again.", minimum=1, maximum=8760)
    setup_attempts: int = setting(10, "Wrong setup codes, from all clients together, before the setup wizard locks "
                                      "until the box is restarted or 'paladin setup reset' is run on its console.",
                                  minimum=3, maximum=1000)


def _timezone_problem(name: str) -> str | None:
    return None if name in timezones() else "is not a time zone this box knows (allowed: e.g. Europe/Berlin, UTC)"


def timezones() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@dataclass(frozen=True)
class DeviceConfig:
    name: str = setting("PAL-adin", "The box's name as its owner chose it in the setup wizard (shown in the web UI "
                                    "and the browser's title); it still answers as paladin.local.",
                        pattern=r"^[\w][\w .'-]{0,39}$", allowed="1 to 40 letters, digits, spaces, . ' -")
    timezone: str = setting("UTC", "Time zone the web UI shows times in.", check=_timezone_problem)
    time_sync: bool = setting(True, "Set the clock from network time servers (NTP).  Off keeps the box silent, but "
                                    "a clock that drifts far makes TLS and signed updates fail.")


@dataclass(frozen=True)
class InferenceConfig:
    model: str = setting("", "Model to serve: a GGUF path, the file name of a GGUF in the model store, or a "
                             "catalog tier name found there; empty serves the store's active model, if any.")
    threads: int = setting(0, "Generation threads; 0 means one per physical core.",
                           minimum=0, maximum=256)
    context_tokens: int = setting(4096, "Context window per conversation, in tokens.",
                                  minimum=64, maximum=131072)
    max_tokens: int = setting(1024, "Tokens generated when a request names no limit; JSON then closes up.",
                              minimum=1, maximum=131072)
    cpu_variant: str = setting("", "llama.cpp CPU backend to use (haswell, alderlake, icelake, ...); empty: the "
                                   "best this CPU reports that proves to run (the box tries it in a child "
                                   "first and falls back on SIGILL).",
                               pattern=r"^[a-z0-9_]{0,32}$", allowed="a variant name such as haswell")
    queue_size: int = setting(16, "Requests that may wait for the model; beyond it the API answers 429.",
                              minimum=1, maximum=1024)


@dataclass(frozen=True)
class UpdateConfig:
    url: str = setting("", "Update repository: an http(s) URL or a directory (a USB stick); empty: none.",
                       pattern=r"^(|https?://\S+|/\S*)$", allowed="an http(s) URL or an absolute path")
    automatic: bool = setting(False, "Check daily and install new releases without asking.")
    reboot: bool = setting(True, "Reboot into a new release as soon as it is installed.")


DEFAULT_LAN = "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 169.254.0.0/16 fc00::/7 fe80::/10"
@dataclass(frozen=True)
class FirewallConfig:
    """What the box lets in and out.  The owner's changes come only through the firewall helper (root), which
    keeps them in /var/lib/paladin-firewall/settings.yaml; the owner's config.yaml cannot set these."""
    lan: str = setting(DEFAULT_LAN, "Address ranges (CIDR, space-separated) that count as the LAN: only they reach "
                                    "the web ports, mDNS and SSH.", check=lan_problem)
    privacy: bool = setting(False, "Privacy mode: the box sends nothing but DHCP, mDNS answers, DNS and update "
                                   "checks (update.url); network time is off (the clock may drift).")
    ssh: bool = setting(False, "SSH for the owner, as root, with firewall.ssh_key only (no passwords), from the "
                               "LAN only.")
    ssh_key: str = setting("", "The owner's OpenSSH public key (one line, e.g. 'ssh-ed25519 AAAA... me@laptop').",
                           pattern=r"^[\x20-\x7e]{0,2048}$", allowed="one line of printable ASCII",
                           check=ssh_key_problem)
    connections_per_second: int = setting(20, "New connections one address may open to the box's ports per second, "
                                              "on average; beyond it (and its burst) they are dropped.",
                                          minimum=1, maximum=10000)
    connection_burst: int = setting(60, "New connections one address may open at once before "
                                        "connections_per_second applies.", minimum=1, maximum=100000)
    logged_drops_per_minute: int = setting(10, "Dropped packets logged to the journal per minute (the rest are "
                                               "only counted); 0: none.", minimum=0, maximum=6000)


@dataclass(frozen=True)
class GovernorConfig:
    """What the resource governor (paladin-governor.service) holds the box to.  Limits of 0 take the board's
    default (`appliance.governor.policy.Limits.for_board`), so one image fits a 4 GB Pi and a 64 GB desktop."""
    enabled: bool = setting(True, "Step the model down the ladder (the owner's model, then smaller ones) when a "
                                  "limit is crossed, and back up when it is safe.")
    pin: str = setting("", "Serve this model (its name, e.g. smollm2-135m-instruct.q4_1) whatever the limits say; "
                           "the governor then only warns.  Empty: the governor chooses.",
                       pattern=r"^[\w.+-]{0,128}$", allowed="a model name, or empty")
    temperature: int = setting(0, "Degrees Celsius (the hottest sensor) that count as too hot; 0: the board's "
                                  "default (80).", minimum=0, maximum=120)
    cpu_percent: int = setting(0, "Share of all cores, in percent, that other programs than the assistant may use "
                                  "before the assistant makes room; 0: the board's default (60 on up to 4 cores, "
                                  "75 above); 100: no CPU limit.", minimum=0, maximum=100)
    memory_percent: int = setting(0, "Available memory, in percent of the total, below which the box is short of "
                                     "memory; 0: the board's default (10, or 15 on 8 GB and less).",
                                  minimum=0, maximum=95)
    margin_percent: int = setting(15, "Hysteresis: a value must be this share (in percent) back from its limit "
                                      "before the governor counts it as safe to step up.", minimum=1, maximum=90)
    breach_seconds: int = setting(10, "Seconds a limit must stay crossed before the governor steps down.",
                                  minimum=1, maximum=3600)
    calm_seconds: int = setting(120, "Seconds everything must stay safe before the governor steps up.",
                                minimum=1, maximum=86400)
    dwell_seconds: int = setting(30, "Least seconds between two steps, so the model never flaps.",
                                 minimum=1, maximum=86400)


@dataclass(frozen=True)
class Config:
    data_dir: str = setting(str(facts.DATA_DIR), "Writable state: database, models, owner config.",
                            pattern=r"^/", allowed="an absolute path")
    device: DeviceConfig = section(DeviceConfig)
    server: ServerConfig = section(ServerConfig)
    inference: InferenceConfig = section(InferenceConfig)
    update: UpdateConfig = section(UpdateConfig)
    firewall: FirewallConfig = section(FirewallConfig)
    governor: GovernorConfig = section(GovernorConfig)

    @property
    def network_time(self) -> bool:
        """systemd-timesyncd runs: the owner's choice, and never in privacy mode."""
        return self.device.time_sync and not self.firewall.privacy

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def models_path(self) -> Path:
        return self.data_path / "models"

    @property
    def database_path(self) -> Path:
        return self.data_path / "paladin.db"

    def listeners(self) -> dict[str, tuple[str, int]]:
        """The server's listeners that are on, by kind: https, redirect, listen (plain API)."""
        server = self.server
        return {kind: _split(value) for kind, value in
                (("https", server.https), ("redirect", server.redirect), ("listen", server.listen)) if value}


def _check(path: str, f: dataclasses.Field, kind: type, value: Any, source: str) -> Any:
    meta = f.metadata
    expected = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {path}: {value!r} is not {expected}")
    low, high = meta["minimum"], meta["maximum"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{source}: {path}: {value!r} is out of range (allowed: {low} to {high})")
    if meta["pattern"] and not re.match(meta["pattern"], value):
        raise ConfigError(f"{source}: {path}: {value!r} is not allowed (allowed: {meta['allowed']})")
    problem = meta["check"](value) if meta["check"] else None
    if problem:
        raise ConfigError(f"{source}: {path}: {value!r} {problem}")
    return value


def _merge(base: Any, raw: Any, source: str, prefix: str = "") -> Any:
    """Return `base` (a config dataclass) updated with the mapping `raw`, validating every value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(base)}
    kinds = typing.get_type_hints(type(base))
    changes = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{source}: {path}: unknown key (known: {', '.join(known)})")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, source, f"{path}.")
        else:
            changes[key] = _check(path, known[key], kinds[key], value, source)
    return dataclasses.replace(base, **changes)


def _read_yaml(path: Path) -> dict:
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
        config = _merge(config, _read_yaml(system_file), str(system_file))
    config = dataclasses.replace(config, firewall=read_firewall(firewall_file, config.firewall))
    overrides = overrides or {}
    config = _merge(config, overrides, "command line")
    owner_file = config.data_path / OWNER_CONFIG_NAME
    if owner_file.exists():
        owner = _read_yaml(owner_file)
        if isinstance(owner, dict) and "firewall" in owner:
            # The assistant writes this file: what reaches the box, and SSH as root, is the helper's to change.
            raise ConfigError(f"{owner_file}: firewall: not allowed here (the firewall helper keeps these "
                              f"settings in {firewall_file})")
        config = _merge(config, owner, str(owner_file))
        config = _merge(config, overrides, "command line")
    return config


def check_firewall(raw: dict, source: str, base: FirewallConfig = FirewallConfig()) -> FirewallConfig:
    """The owner's firewall settings (the helper's file, or a request from the web UI) over `base`, checked
    alone and together: SSH needs a key, as there are no passwords."""
    checked = _merge(base, raw, source, "firewall.")
    if checked.ssh and not checked.ssh_key:
        raise ConfigError(f"{source}: firewall.ssh_key: SSH needs the owner's public key, as the box has no "
                          "passwords to log in with: paste the line from ~/.ssh/id_ed25519.pub")
    return checked


def read_firewall(path: Path, base: FirewallConfig = FirewallConfig()) -> FirewallConfig:
    """The firewall helper's settings file over `base` (just `base` while there is none)."""
    return check_firewall(_read_yaml(path), str(path), base) if path.exists() else base


def parse(raw: dict, source: str = "config") -> Config:
    return _merge(Config(), raw, source)


def _deep_update(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _deep_update(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def save_owner(data_dir: Path, changes: dict) -> Config:
    """Merge `changes` into the owner's file on the data partition, durably, if the result is valid;
    returns what that file alone configures (over the defaults)."""
    owner_file = Path(data_dir) / OWNER_CONFIG_NAME
    merged = _deep_update(_read_yaml(owner_file) if owner_file.exists() else {}, changes)
    checked = _merge(Config(), merged, str(owner_file))
    files.write(owner_file, yaml.safe_dump(merged, sort_keys=True).encode(), mode=0o600)
    return checked


class Live:
    """The running service's configuration: the one it started with, and the owner's changes since, each
    saved durably first (`save_owner`) and then applied."""

    def __init__(self, config: Config):
        self.config = config

    def save(self, changes: dict) -> Config:
        save_owner(self.config.data_path, changes)
        self.config = _merge(self.config, changes, "the owner's change")
        return self.config


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def json_schema(cls: type = Config) -> dict:
    """The JSON Schema of the configuration file, from the same metadata that validates it."""
    properties = {}
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            properties[f.name] = json_schema(kind)
            continue
        prop: dict[str, Any] = {
            "type": {str: "string", int: "integer", float: "number", bool: "boolean"}[kind],
            "default": f.default, "description": f.metadata["help"]}
        for key, name in (("minimum", "minimum"), ("maximum", "maximum"), ("pattern", "pattern")):
            if f.metadata[key] is not None:
                prop[name] = f.metadata[key]
        properties[f.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": properties}


def markdown(cls: type = Config, prefix: str = "") -> str:
    """The configuration reference (docs/configuration.md), from the same metadata that validates it."""
    if not prefix:
        text = ("# Configuration\n\n<!-- generated by `paladin config docs` from appliance/config.py; "
                "a test keeps it current -->\n\n"
                "Values come, last one winning, from the defaults below, the image's `/etc/paladin/paladin.yaml`, "
                "the owner's `<data_dir>/config.yaml` and the command line.\n\n"
                "| key | type | default | allowed | what |\n| --- | --- | --- | --- | --- |\n")
    else:
        text = ""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            text += markdown(kind, f"{prefix}{f.name}.")
            continue
        meta = f.metadata
        allowed = meta["allowed"] or (f"{meta['minimum']} to {meta['maximum']}" if meta["minimum"] is not None else "")
        name = {str: "string", int: "integer", float: "number", bool: "boolean"}[kind]
        text += f"| `{prefix}{f.name}` | {name} | `{json.dumps(f.default)}` | {allowed} | {meta['help']} |\n"
    return text


def default_threads() -> int:
    """One thread per physical core: llama.cpp's decode is memory-bound and SMT siblings only contend."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
