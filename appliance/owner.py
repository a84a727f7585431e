"""The box's owner: the account the setup wizard makes, its password, and the wizard's progress.

Passwords are stretched with scrypt (memory-hard: 32 MiB and ~0.1 s per guess on a small box), so a
stolen database gives an attacker no cheap guesses.  The wizard's progress is kept in the database, a
step at a time, so a reload or a reboot in the middle comes back to the same step; `finish` locks the
wizard for good, and only a factory reset (`paladin factory-reset`) opens it again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
import time

from .db import transaction
from .errors import InvalidRequest

STEPS = ("code", "owner", "device", "model", "privacy", "summary")
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
SCRYPT_MAXMEM = 64 * 2**20
MIN_PASSWORD, MAX_PASSWORD = 12, 1024
MAX_NAME = 64


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=SCRYPT_MAXMEM, dklen=32, **SCRYPT)
    encode = base64.b64encode
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${encode(salt).decode()}${encode(digest).decode()}"


def password_matches(stored: str, password: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    if len(password) > MAX_PASSWORD:
        return False
    computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                              maxmem=SCRYPT_MAXMEM, dklen=32)
    return hmac.compare_digest(computed, base64.b64decode(digest))


def password_problem(password: str, name: str) -> str | None:
    """What is wrong with a new password, said so a person knows what to type instead; None if nothing."""
    if len(password) < MIN_PASSWORD:
        return f"The password needs at least {MIN_PASSWORD} characters (a few words in a row are easy to remember)."
    if len(password) > MAX_PASSWORD:
        return f"The password can have at most {MAX_PASSWORD} characters."
    if len(set(password)) < 4 or password.lower() == name.lower():
        return "The password is too easy to guess: use different characters, not the account name."
    return None


def name_problem(name: str) -> str | None:
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable() or name != name.strip():
        return f"The name needs 1 to {MAX_NAME} printable characters, without spaces at the ends."
    return None


# -- the account -------------------------------------------------------------------------------

def account(db: sqlite3.Connection) -> sqlite3.Row | None:
    return db.execute("SELECT name, password FROM owner WHERE id = 1").fetchone()


def set_account(db: sqlite3.Connection, name: str, password: str) -> None:
    """Make (or, before the wizard finished, replace) the owner's account."""
    if problem := name_problem(name) or password_problem(password, name):
        raise InvalidRequest(problem)
    hashed = hash_password(password)
    with transaction(db):
        db.execute("INSERT OR REPLACE INTO owner (id, name, password, created) VALUES (1, ?, ?, ?)",
                   (name, hashed, time.time()))


def check_login(db: sqlite3.Connection, name: str, password: str) -> bool:
    """Whether `name` and `password` are the owner's; as slow for a wrong name as for a wrong password."""
    found = account(db)
    stored = found["password"] if found else hash_password(secrets.token_hex(8))
    right = password_matches(stored, password)
    return bool(found) and hmac.compare_digest(found["name"].encode(), name.encode()) and right


# -- the wizard's progress -----------------------------------------------------------------------

def _get(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM setup WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None


def _set(db: sqlite3.Connection, **values: str) -> None:
    with transaction(db):
        db.executemany("INSERT OR REPLACE INTO setup (key, value) VALUES (?, ?)", values.items())


def finished(db: sqlite3.Connection) -> bool:
    return _get(db, "finished") is not None


def step(db: sqlite3.Connection) -> str:
    """The step the wizard is at ("done" once finished)."""
    return "done" if finished(db) else _get(db, "step") or STEPS[0]


def reached(db: sqlite3.Connection) -> tuple[str, ...]:
    """The steps a person may open: every one up to the current step."""
    current = step(db)
    return STEPS if current == "done" else STEPS[:STEPS.index(current) + 1]


def complete(db: sqlite3.Connection, name: str) -> None:
    """Step `name` is done: go on to the next one (going back and redoing a step keeps the later ones)."""
    current = step(db)
    if current != "done" and STEPS.index(name) >= STEPS.index(current):
        following = STEPS.index(name) + 1
        _set(db, step=STEPS[following] if following < len(STEPS) else STEPS[-1])


def finish(db: sqlite3.Connection) -> None:
    _set(db, finished=str(time.time()))


def failures(db: sqlite3.Connection) -> int:
    return int(_get(db, "failures") or 0)


def count_failure(db: sqlite3.Connection) -> int:
    with transaction(db):
        count = failures(db) + 1
        db.execute("INSERT OR REPLACE INTO setup (key, value) VALUES ('failures', ?)", (str(count),))
    return count


def locked(db: sqlite3.Connection, attempts: int) -> bool:
    """Whether `attempts` wrong setup codes have been typed since the last new code."""
    return failures(db) >= attempts


def clear_failures(db: sqlite3.Connection) -> None:
    _set(db, failures="0")
