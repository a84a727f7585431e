"""Browser sessions: a random id in a cookie, stored only as its SHA-256 (like API tokens), ended by
logging out, by going unused for `server.session_hours`, or by a factory reset.

Two kinds: a `setup` session proves its browser typed the setup code; an `owner` session proves the
owner's password (the setup session becomes one when the wizard finishes).  Each session has a CSRF
token, an HMAC of its id under the device's session key: pages carry it, and every state-changing
request made with the cookie must send it back, which a page on another site cannot read.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import time

from .db import transaction
from .errors import NoSpace

# __Host-: the browser sends it only to this exact host over HTTPS and lets no other name set it.
COOKIE = "__Host-paladin"
CSRF_FIELD, CSRF_HEADER = "csrf", "x-csrf-token"
SEEN_EVERY = 60  # seconds: how stale the last-seen time may get, so that browsing is not a write per request


def _hash(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def start(db: sqlite3.Connection, kind: str) -> str:
    raw, now = secrets.token_urlsafe(32), time.time()
    with transaction(db):
        db.execute("INSERT INTO sessions (hash, kind, created, seen) VALUES (?, ?, ?, ?)", (_hash(raw), kind, now, now))
    return raw


def find(db: sqlite3.Connection, raw: str, idle_seconds: float) -> str | None:
    """The kind of the live session `raw`, or None; a session past its idle time is deleted."""
    if not raw or len(raw) > 100:
        return None
    key, now = _hash(raw), time.time()
    row = db.execute("SELECT kind, seen FROM sessions WHERE hash = ?", (key,)).fetchone()
    if row is None:
        return None
    if now - row["seen"] > idle_seconds:
        end(db, raw)
        return None
    if now - row["seen"] > SEEN_EVERY:
        with contextlib.suppress(NoSpace), transaction(db):  # a full disk must not log the owner out
            db.execute("UPDATE sessions SET seen = ? WHERE hash = ?", (now, key))
    return row["kind"]


def promote(db: sqlite3.Connection, raw: str) -> None:
    with transaction(db):
        db.execute("UPDATE sessions SET kind = 'owner' WHERE hash = ?", (_hash(raw),))


def end(db: sqlite3.Connection, raw: str) -> None:
    with transaction(db):
        db.execute("DELETE FROM sessions WHERE hash = ?", (_hash(raw),))


def end_all(db: sqlite3.Connection, kind: str) -> None:
    with transaction(db):
        db.execute("DELETE FROM sessions WHERE kind = ?", (kind,))


def csrf_token(key: bytes, raw: str) -> str:
    return hmac.new(key, raw.encode(), hashlib.sha256).hexdigest()


def csrf_matches(key: bytes, raw: str, presented: str | None) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500), and a forged
    # token may hold any.
    return bool(presented) and hmac.compare_digest(csrf_token(key, raw).encode(), presented.encode())
