"""Restoring a backup: everything is checked before anything changes (docs/backups.md, "Restore").

`stage` reads the backup once, as it streams in: each member goes straight to `restore/files/` (never a
copy of the encrypted file beside it, so a restore needs about as much free space as the data it brings)
and is checked against the manifest; then the database (integrity, schema, migrated forward when older),
the owner's settings and the firewall's are checked as the box would read them, and what the restore
would bring is summed up for the owner (`preview.json`).  Nothing outside `restore/` has changed yet;
`swap.commit` (the owner's confirmation) and `swap.finish` put it in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import BinaryIO

from .. import config as config_module, db as database, files
from ..config import ConfigError
from ..layout import DataDir
from . import archive, contents, swap
from .archive import BackupError, Member, NotEnoughSpace


class _Staging(archive.Sink):
    def __init__(self, data: DataDir):
        self.data, self.top = data, data.restore_files

    def accept(self, manifest: dict) -> None:
        names = manifest["files"]
        if strange := sorted(name for name in names if not contents.allowed(name)):
            raise BackupError(f"this backup lists {strange[0][:100]!r}, which no PAL-adin backup holds")
        if contents.DATABASE not in names:
            raise BackupError("this backup holds no database")
        schema, ours = manifest.get("schema"), len(database.MIGRATIONS)
        if type(schema) is not int or schema < 1:
            raise BackupError("this backup's manifest names no database schema")
        if schema > ours:
            raise BackupError(f"this backup was made by a newer PAL-adin OS (its database has schema {schema}, this "
                              f"box's software knows {ours}): update this box first, then restore")
        if problem := files.shortfall(self.data.root, sum(line["size"] for line in names.values())):
            raise NotEnoughSpace(f"nothing was restored: {problem}")

    def open(self, member: Member) -> BinaryIO:
        path = self.top / member.name
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")


def stage(data: DataDir, source: BinaryIO, key: str, *, needs: str = "") -> dict:
    """Read the backup from `source` into the staging area and check all of it; the preview, or BackupError
    (nothing kept) naming what is wrong."""
    if swap.committed(data):
        raise BackupError("a restore is being put in place already: wait for the box to restart")
    shutil.rmtree(data.restore, ignore_errors=True)
    data.restore_files.mkdir(parents=True)
    try:
        manifest = archive.read(source, key, _Staging(data), needs=needs)
        top = data.restore_files
        summary = _check_database(top / contents.DATABASE)
        _check_settings(top)
        # The key the owner typed becomes the restored box's: it opens this backup, so its owner has it.
        files.write(top / data.device.recovery_key.relative_to(data.root), key.encode(), mode=0o600)
        # What the manifest says is shown to the owner: text, bounded (whoever holds the key could write it).
        preview = {**{name: str(manifest.get(name, ""))[:100] for name in ("created", "box", "product", "key")},
                   "identity": manifest.get("identity") is True,
                   **summary, "bytes": sum(line["size"] for line in manifest["files"].values()),
                   "models": sorted(name.removeprefix("models/") for name in manifest["files"]
                                    if name.startswith("models/"))}
        files.write(data.restore_preview, json.dumps(preview).encode(), mode=0o600)
        return preview
    except OSError as err:
        swap.discard(data)
        if err.errno == errno.ENOSPC:
            raise NotEnoughSpace("nothing was restored: the data partition filled up while the backup was read "
                                 "(something else wrote to it too); free space and try again") from None
        raise
    except BaseException:
        swap.discard(data)
        raise


def preview(data: DataDir) -> dict | None:
    """What the staged restore would bring, while it waits for the owner's confirmation."""
    if swap.committed(data):
        return None
    try:
        return json.loads(data.restore_preview.read_text())
    except (OSError, ValueError):
        return None


def _check_database(path: Path) -> dict:
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise BackupError(f"the database in this backup is damaged ({verdict[:120]})")
            database.migrate(db)  # an older backup's schema, brought forward here rather than after the swap
            db.execute("PRAGMA journal_mode = DELETE")  # one file to swap in (the service turns WAL on again)
            counted = db.execute("SELECT (SELECT count(*) FROM conversations), (SELECT count(*) FROM messages), "
                                 "(SELECT count(*) FROM api_tokens WHERE revoked IS NULL), "
                                 "(SELECT name FROM owner)").fetchone()
            return dict(zip(("conversations", "messages", "tokens", "owner"), counted))
    except sqlite3.DatabaseError as err:
        raise BackupError(f"the database in this backup cannot be read ({err})") from None


def _check_settings(top: Path) -> None:
    """The owner's settings and the firewall's as the box will read them (an absent settings file becomes an
    empty one: the restored box has exactly the backup's settings, not a mix)."""
    settings = top / contents.SETTINGS
    try:
        if settings.exists():
            config_module.check_owner(config_module.read_yaml(settings), f"the backup's {contents.SETTINGS}")
        else:
            files.write(settings, b"", mode=0o600)
        firewall = json.loads((top / contents.FIREWALL).read_text()) if (top / contents.FIREWALL).exists() else None
        if firewall is not None:
            if not isinstance(firewall, dict) or set(firewall) != set(contents.FIREWALL_FIELDS):
                raise BackupError(f"the backup's {contents.FIREWALL} is not the firewall's settings")
            config_module.check_firewall(firewall, f"the backup's {contents.FIREWALL}")
    except (ConfigError, ValueError) as err:
        raise BackupError(f"this backup's settings cannot be used: {err}") from None
