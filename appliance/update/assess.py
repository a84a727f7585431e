"""Boot assessment: does the assistant of this boot answer?  If not, the boot loader falls back
(`loader.py`: reboot while systemd-boot still counts tries, or out of a Raspberry Pi's trial)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import command, config as config_module
from ..layout import UpdateState
from .progress import UpdateError, write_json
from .loader import loader
from .status import read_state, running_version

HEALTH_DEADLINE = 8 * 60  # under the unit's TimeoutStartSec; a first boot may load a large model
KEEP_ATTEMPTS = 20


def attempt(state: UpdateState, result: str, reason: str) -> dict:
    record = {"version": running_version(), "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
              "time": time.time(), "result": result, "reason": reason, "counted": loader().trial()}
    attempts = read_state(state.attempts, [])
    attempts = [a for a in attempts if a.get("boot_id") != record["boot_id"]] + [record]
    write_json(state.attempts, attempts[-KEEP_ATTEMPTS:])
    return record


def failed_versions(state: UpdateState = UpdateState()) -> frozenset[str]:
    """Versions whose boots on this box failed their assessment and never passed it."""
    attempts = read_state(state.attempts, [])
    good = {a.get("version") for a in attempts if a.get("result") == "good"}
    return frozenset(a.get("version") for a in attempts if a.get("result") == "failed") - good


# The box asks itself over loopback: the certificate is its own, and checking it proves nothing here.
LOOPBACK_TLS = ssl.create_default_context()
LOOPBACK_TLS.check_hostname, LOOPBACK_TLS.verify_mode = False, ssl.CERT_NONE


def _get(url: str, timeout: float = 60) -> dict:
    with urllib.request.urlopen(url, timeout=timeout, context=LOOPBACK_TLS) as response:
        return json.loads(response.read())


def base_url(config: config_module.Config) -> str:
    """The assistant's own URL for itself: the plain API listener, or HTTPS where that is off."""
    listeners = config.listeners()
    scheme, (host, port) = ("http", listeners["listen"]) if "listen" in listeners else ("https", listeners["https"])
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def assess(config: config_module.Config, state: UpdateState = UpdateState(), deadline: float = HEALTH_DEADLINE) -> str:
    """Pass when the assistant answers /health and, with a model, generates one token; else raise."""
    base = base_url(config)
    give_up, reason = time.monotonic() + deadline, "the assistant never answered"
    while time.monotonic() < give_up:
        unit = dict(line.split("=", 1) for line in command.run(
            ["systemctl", "show", "paladin.service", "-p", "ActiveState", "-p", "Result"]).split())
        if unit.get("ActiveState") == "failed":
            reason = f"paladin.service failed (result: {unit.get('Result')})"
            break
        try:
            health = _get(f"{base}/health", timeout=10)
        except (OSError, ValueError) as err:
            reason = f"the assistant did not answer /health: {err}"
            time.sleep(2)
            continue
        if health.get("status") == "ok":
            try:
                probe = _get(f"{base}/health?probe=1")
            except urllib.error.HTTPError as err:
                reason = f"one-token inference failed: HTTP {err.code}"
                if err.code in (429, 503):  # busy or still loading: ask again until the deadline
                    time.sleep(2)
                    continue
                break
            except (OSError, ValueError) as err:
                reason = f"one-token inference failed: {err}"
                break
            if probe.get("probe") == "ok":
                attempt(state, "good", f"assistant answers; one-token inference took {probe['seconds']} s")
                return "good"
            reason = f"one-token inference failed: {probe}"
            break
        if health.get("status") == "no_model":
            attempt(state, "good", "assistant answers (no model installed yet)")
            return "good"
        time.sleep(2)
    attempt(state, "failed", reason)
    raise UpdateError(f"boot assessment failed: {reason}")


def boot_failed(state: UpdateState = UpdateState()) -> None:
    """After a failed or hung assessment: keep why, and let the boot loader fall back."""
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    attempts = read_state(state.attempts, [])
    if not any(a.get("boot_id") == boot_id and a.get("result") == "failed" for a in attempts):
        attempt(state, "failed", "boot assessment did not finish in time")
    loader().fall_back()


