"""The box's SQLite database on the data partition, with forward-only schema migrations.

`PRAGMA user_version` records how many migrations have run; each runs in its
own transaction, so a power cut leaves the schema at a whole version.

Updates and rollbacks: before migrating from schema N, the database is copied
to `paladin.db.schema-N`.  If an update is rolled back, the older software finds
a schema newer than it knows; it then sets the newer database aside
(`paladin.db.schema-M.rolled-back`, nothing is deleted) and restores the copy
made at its own schema.  What was written under the newer version after its
migration stays in the set-aside file, not in the restored one.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from . import files
from .errors import NoSpace

MIGRATIONS = [
    """
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        created REAL NOT NULL,
        revoked REAL
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation, id);
    """,
    # The box's owner (one), browser sessions (stored as hashes, like tokens) and the setup wizard's state.
    """
    CREATE TABLE owner (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        password TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE sessions (
        hash BLOB PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('setup', 'owner')),
        created REAL NOT NULL,
        seen REAL NOT NULL
    );
    CREATE TABLE setup (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE api_tokens ADD COLUMN last_used REAL;
    """,
    # How each reply ended ('stop', 'length', 'stopped' by the owner) and how many of the oldest messages
    # were left out of its prompt because the conversation had outgrown the model's context.
    """
    ALTER TABLE messages ADD COLUMN finish TEXT;
    ALTER TABLE messages ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
    """,
]


class DatabaseError(RuntimeError):
    """The database is newer than this software or unusable."""


def snapshot_path(path: Path, schema: int) -> Path:
    return path.with_name(f"{path.name}.schema-{schema}")


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = _open(path)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        db.close()
        _restore(path, version)
        db = _open(path)
    elif 0 < version < len(MIGRATIONS):
        copy(db, snapshot_path(path, version))
    migrate(db)
    return db


def _restore(path: Path, newer: int) -> None:
    """Back on older software after a rollback: the snapshot of our schema replaces the newer database."""
    snapshot = snapshot_path(path, len(MIGRATIONS))
    if not snapshot.exists():
        raise DatabaseError(f"the database is at schema {newer}, newer than this software's {len(MIGRATIONS)}, "
                            f"and there is no snapshot {snapshot.name} to go back to")
    aside = path.with_name(f"{path.name}.schema-{newer}.rolled-back")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(aside.with_name(aside.name + suffix))
    with contextlib.closing(sqlite3.connect(snapshot)) as old:
        copy(old, path)


def copy(db: sqlite3.Connection, dest: Path) -> None:
    """A consistent copy of `db` at `dest`, complete or not there at all (power cuts)."""
    partial = files.partial(dest)
    partial.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(partial)) as copy:
        db.backup(copy)
    files.commit(partial, dest)


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is on disk when it returns, so a power cut never undoes an acknowledged write (a
    # token revocation above all); the box writes little, so the extra fsync per commit costs nothing.
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Commit what the block wrote, or roll all of it back if the block raises (the connection is
    never left inside a transaction, which would fail every later write)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as err:
        if err.sqlite_errorcode == sqlite3.SQLITE_FULL:
            raise NoSpace("the data partition is full: nothing was saved; free space (delete a model or "
                          "old conversations) and try again") from None
        raise


def migrate(db: sqlite3.Connection) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise DatabaseError(f"the database is at schema {version}, newer than this software's "
                            f"{len(MIGRATIONS)}; it was written by a newer release")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(db):
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)
