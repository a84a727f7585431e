"""The box's settings, as one table: frozen dataclasses whose fields carry their help and bounds
(schema.setting).  Parsing, messages, the JSON Schema, docs/configuration.md and the command line's
overrides all come from it."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .. import facts
from ..layout import DataDir
from ..access import lan_problem, ssh_key_problem
from .schema import setting, section


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


@functools.cache  # the zone database is a tree of files, read once per process
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
                                  "default (80; 75 on a Raspberry Pi, whose firmware slows the CPU from 80).",
                                  minimum=0, maximum=120)
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

    def memory_reserve(self, memory_total: int) -> int:
        """The percent of memory kept available: the owner's, or the board's default (small boards keep more
        free: the page cache is what keeps a model's weights readable)."""
        return self.memory_percent or (15 if memory_total <= 8 * 2**30 else 10)


@dataclass(frozen=True)
class BackupConfig:
    """Encrypted backups (docs/backups.md): what they hold, the daily one, and how many are kept on the box."""
    schedule: bool = setting(False, "Make a backup every day (paladin-backup.timer) once the recovery kit is "
                                    "confirmed.")
    identity: bool = setting(True, "Include the box's TLS key and certificate and its session key, so a box restored "
                                   "from the backup keeps the certificate fingerprint its owner accepted.")
    models: bool = setting(False, "Include the installed models (large; the catalog downloads them again by their "
                                  "pinned hashes anyway).")
    keep: int = setting(7, "Backups kept on the box however old they are (the newest ones).", minimum=1, maximum=365)
    days: int = setting(30, "Backups beyond `keep` are deleted once they are older than this many days.",
                        minimum=1, maximum=3650)


def _path(default: str, help: str, *, optional: bool = False) -> Any:
    return setting(default, help, pattern=r"^(/|$)" if optional else r"^/",
                   allowed="an absolute path" + (", or empty" if optional else ""))


@dataclass(frozen=True)
class PathsConfig:
    """Where the assistant finds what other parts of the box keep: the image's places, which tests point
    elsewhere.  Like data_dir, not the owner's to set (their file is written by the assistant itself)."""
    catalog: str = _path("", "The model catalog, a YAML ladder of tiers; empty: the one this software ships.",
                         optional=True)
    governor_socket: str = _path(facts.GOVERNOR_SOCKET, "Where the assistant reaches the resource governor.")


@dataclass(frozen=True)
class Config:
    data_dir: str = _path(str(facts.DATA_DIR), "Writable state: database, models, owner config.")
    device: DeviceConfig = section(DeviceConfig)
    server: ServerConfig = section(ServerConfig)
    inference: InferenceConfig = section(InferenceConfig)
    update: UpdateConfig = section(UpdateConfig)
    firewall: FirewallConfig = section(FirewallConfig)
    governor: GovernorConfig = section(GovernorConfig)
    backup: BackupConfig = section(BackupConfig)
    paths: PathsConfig = section(PathsConfig)

    @property
    def network_time(self) -> bool:
        """systemd-timesyncd runs: the owner's choice, and never in privacy mode."""
        return self.device.time_sync and not self.firewall.privacy

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def data(self) -> DataDir:
        return DataDir(self.data_path)

    def listeners(self) -> dict[str, tuple[str, int]]:
        """The server's listeners that are on, by kind: https, redirect, listen (plain API)."""
        server = self.server
        return {kind: _split(value) for kind, value in
                (("https", server.https), ("redirect", server.redirect), ("listen", server.listen)) if value}


def default_threads() -> int:
    """One thread per physical core: llama.cpp's decode is memory-bound and SMT siblings only contend."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
