"""What the firewall helper keeps, read without privilege: the owner's settings, the last outcome, the
SSH host key's fingerprint.  The assistant's worker imports this and nothing else of the helper's package
(tests/web/test_imports.py); what writes here is root's (helper.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

from .. import config as config_module
from ..layout import FirewallState


def settings(state: FirewallState) -> dict:
    """The owner's firewall settings as the helper keeps them (the defaults' where none were made)."""
    return dataclasses.asdict(config_module.read_firewall(state.settings))


def outcome(state: FirewallState) -> dict | None:
    try:
        return json.loads(state.outcome.read_text())
    except (OSError, ValueError):
        return None


def host_key_fingerprint(state: FirewallState) -> str | None:
    """The host key's fingerprint as ssh shows it (SHA256:...), or None before there is one."""
    try:
        blob = base64.b64decode(state.host_key_public.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
