"""Putting a checked restore in place, all of it or none of it.

`restore.stage` leaves the backup's files, each checked, in `restore/files/`.  The owner's confirmation
writes `restore/commit`, durably: from then on the restore happens.  The next start of `paladin serve`
(which the confirmation causes) rolls it forward before anything opens the data: each staged file is
renamed over its place (the database's WAL and shared-memory files go first, so no old log is replayed
into the new database), the firewall's settings are handed to its helper, then the mark and the staging
go.  Every step may be cut by a power loss and is simply done again at the next start.  Without the
mark, the next start throws the staging away: a restore never confirmed, or cut while it was checked,
changes nothing.

Standard library and the box's small modules only: gunicorn's arbiter runs this, before it forks.
"""

from __future__ import annotations

import json
import logging
import shutil

from .. import channel, files
from ..layout import DataDir

log = logging.getLogger(__name__)
FIREWALL = "firewall.json"  # a backup's member: the firewall helper's settings, handed over as a request


def committed(data: DataDir) -> bool:
    return data.restore_commit.exists()


def commit(data: DataDir) -> None:
    """The owner confirmed: the staged restore will be put in place at the service's next start."""
    files.write(data.restore_commit, b"restore the staged files\n", mode=0o600)


def discard(data: DataDir) -> None:
    """Throw away a restore that was never confirmed (one that was is put in place, never thrown away)."""
    if not committed(data):
        shutil.rmtree(data.restore, ignore_errors=True)


def finish(data: DataDir) -> bool:
    """Roll a committed restore forward (True), or throw away one never committed (False)."""
    if not committed(data):
        discard(data)
        return False
    top = data.restore_files
    for path in sorted((p for p in top.rglob("*") if p.is_file()), key=lambda p: p.name == data.database.name):
        name = path.relative_to(top)
        if str(name) == FIREWALL:
            continue
        dest = data.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest == data.database:
            for suffix in ("-wal", "-shm"):
                dest.with_name(dest.name + suffix).unlink(missing_ok=True)
        files.commit(path, dest)
    firewall = top / FIREWALL
    if firewall.exists():
        channel.submit(data.root, channel.FirewallRequest(**json.loads(firewall.read_text())))
    shutil.rmtree(top, ignore_errors=True)
    data.restore_commit.unlink()
    shutil.rmtree(data.restore, ignore_errors=True)
    log.warning("a backup was restored: the owner's data, settings and keys are the backup's now")
    return True
