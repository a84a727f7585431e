"""API tokens: random, shown once, stored only as SHA-256 hashes.

A token carries 256 random bits, so a plain hash is enough (no password
stretching needed) and a stolen database does not reveal usable tokens.
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

PREFIX = "pal_"
LAST_USED_EVERY = 60  # seconds: "last used" is shown to the minute; a write per API request would cost more


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create(db: sqlite3.Connection, name: str) -> str:
    token = PREFIX + secrets.token_urlsafe(32)
    with transaction(db):
        db.execute("INSERT INTO api_tokens (name, hash, created) VALUES (?, ?, ?)", (name, _hash(token), time.time()))
    return token


def revoke(db: sqlite3.Connection, name: str) -> int:
    with transaction(db):
        return db.execute("UPDATE api_tokens SET revoked = ? WHERE name = ? AND revoked IS NULL",
                          (time.time(), name)).rowcount


def listing(db: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in db.execute("SELECT id, name, created, revoked, last_used FROM api_tokens ORDER BY id")]


def live_names(db: sqlite3.Connection) -> set[str]:
    return {row["name"] for row in db.execute("SELECT name FROM api_tokens WHERE revoked IS NULL")}


def verify(db: sqlite3.Connection, token: str) -> str | None:
    """The name of the live token equal to `token`, or None.

    Every stored hash is compared in constant time, so neither the answer's
    timing nor an index look-up tells how close a guess came.
    """
    digest = _hash(token)
    match = None
    for row in db.execute("SELECT id, name, hash, last_used FROM api_tokens WHERE revoked IS NULL"):
        if hmac.compare_digest(row["hash"], digest):
            match = row
    if match is None:
        return None
    now = time.time()
    if now - (match["last_used"] or 0) > LAST_USED_EVERY:
        with contextlib.suppress(NoSpace), transaction(db):  # a full disk must not lock the owner's clients out
            db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, match["id"]))
    return match["name"]
