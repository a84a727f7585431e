"""What a backup holds, and making one (docs/backups.md, "What is in a backup").

A closed set of members, each a file of the data directory or a settings table: the database (a copy
through SQLite's online backup API, never the live file), the owner's settings, the box's TLS key,
certificate and session key (so a restored box keeps the fingerprint its owner accepted; a choice), the
firewall helper's settings and, only when asked, the installed models.  A backup is written to
`backups/NAME.age.partial`, read back whole with the box's recovery key and checked against its manifest,
and only then named `NAME.age`: a name ending in .age is a backup that was verified.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import db as database, files, store
from ..config import Config
from ..firewall import state as firewall_state
from ..layout import BACKUP_NAME, DataDir, FirewallState
from ..update import status
from . import archive, keys
from .swap import FIREWALL
from .archive import BackupError, Member, NotEnoughSpace

DATABASE = DataDir().beneath(DataDir().database)  # members are named by their place in the data directory
SETTINGS = DataDir().beneath(DataDir().owner_config)
IDENTITY = ("device/tls-key.pem", "device/tls-cert.pem", "device/session.key")
MODEL = re.compile(r"models/[\w.+-]{1,200}\.gguf")
FIREWALL_FIELDS = ("lan", "privacy", "ssh", "ssh_key")
SUFFIX = ".age"
OVERHEAD = 2**20  # tar headers, the padding frame, age's header and tags, beyond what zstd may add
GROWTH = 1.01  # what zstd may add to incompressible data, at most (a model's weights)
WARN_DAYS = 7


def allowed(name: str) -> bool:
    """Whether `name` may be a member: nothing outside the closed set is ever taken back."""
    return name in (DATABASE, SETTINGS, FIREWALL, *IDENTITY) or bool(MODEL.fullmatch(name))


def source(data: DataDir, name: str) -> Path:
    """Where member `name` lives on the box."""
    return data.root / name


def needs_key(filename: str) -> str:
    """The fingerprint a backup's file name says it was made for ("" when the name was changed)."""
    found = BACKUP_NAME.search(filename)
    return found.group(2) if found else ""


@dataclass(frozen=True)
class Made:
    """A verified backup on the box."""
    path: Path
    size: int
    created: float
    key: str

    @property
    def name(self) -> str:
        return self.path.name


def listing(data: DataDir) -> list[Made]:
    """The verified backups on the box, newest first."""
    found = []
    for path in data.backups.glob("*" + SUFFIX) if data.backups.is_dir() else ():
        if (named := BACKUP_NAME.fullmatch(path.name)) and path.is_file():
            created = datetime.strptime(named.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc).timestamp()
            found.append(Made(path, path.stat().st_size, created, named.group(2)))
    return sorted(found, key=lambda made: made.created, reverse=True)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "box"


def make(config: Config, *, identity: bool = True, models: bool = False, now: float | None = None) -> Made:
    """A verified backup of the box in `backups/`; BackupError (nothing kept) when one cannot be made."""
    data = config.data
    key = keys.Keys(data.device).current()
    if key is None:
        raise BackupError("backups are off until the recovery kit is confirmed (Backups page)")
    created = time.time() if now is None else now
    fingerprint = keys.fingerprint_of(key)
    stamp = datetime.fromtimestamp(created, timezone.utc)
    dest = data.backups / f"paladin-{_slug(config.device.name)}-{stamp:%Y%m%d-%H%M%S}-{fingerprint}{SUFFIX}"
    work = data.backup_work
    data.backups.mkdir(parents=True, exist_ok=True)
    with _alone(data.backup_lock):
        shutil.rmtree(work, ignore_errors=True)  # what an interrupted backup left
        work.mkdir()
        _write(config, key, dest, work, head={"created": stamp.isoformat(timespec="seconds"), "key": fingerprint,
                                               "identity": identity, "models": models})
    return Made(dest, dest.stat().st_size, created, fingerprint)


@contextlib.contextmanager
def _alone(lock: Path):
    """One backup at a time on the box, whoever makes it (the page, the daily timer, the console)."""
    with lock.open("a") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError("a backup is being made already (the daily one?): wait for it to end") from None
        yield


def _write(config: Config, key: str, dest: Path, work: Path, head: dict) -> None:
    """The backup written to `dest`'s partial file, read back from the disk and checked, then named `dest`."""
    data, identity, models = config.data, head["identity"], head["models"]
    try:
        members = _gather(config, work, identity=identity, models=models)
        needed = int(sum(m.size for m, _ in members) * GROWTH) + OVERHEAD
        if problem := files.shortfall(data.backups, needed):
            raise NotEnoughSpace(f"no backup made: {problem}")
        head = {"schema": len(database.MIGRATIONS), "product": status.running_version(), "box": config.device.name,
                **head}
        partial = files.partial(dest)
        with partial.open("wb") as out:
            archive.write(out, head, members, keys.recipient(key))
            os.fsync(out.fileno())
            # What is read back comes from the card or stick itself, not from the page cache.
            os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            with partial.open("rb") as written:
                archive.read(written, key)
        except BackupError as err:
            raise BackupError(f"the backup did not read back as written ({err}); nothing was kept") from None
        files.commit(partial, dest)
    except OSError as err:
        files.partial(dest).unlink(missing_ok=True)
        kind = NotEnoughSpace if err.errno == errno.ENOSPC else BackupError
        raise kind(f"no backup made: {err.strerror or err} (nothing was kept)") from None
    except BaseException:
        files.partial(dest).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gather(config: Config, work: Path, *, identity: bool, models: bool) -> list[tuple[Member, Path]]:
    """Every member, measured, with where it is read from: the database and the firewall's settings as
    copies in `work` (a consistent database; the settings as the firewall helper keeps them)."""
    data = config.data
    if problem := files.shortfall(work, _database_size(data.database)):
        raise NotEnoughSpace(f"no backup made: {problem}")
    copied = work / DATABASE
    with contextlib.closing(sqlite3.connect(f"{data.database.absolute().as_uri()}?mode=ro", uri=True)) as live:
        database.copy(live, copied)
    firewall = work / FIREWALL
    # As the helper keeps them now (the service's own configuration is what they were when it started).
    settings = firewall_state.settings(FirewallState())
    firewall.write_text(json.dumps({name: settings[name] for name in FIREWALL_FIELDS}))
    sources = {DATABASE: copied, FIREWALL: firewall}
    if data.owner_config.exists():
        sources[SETTINGS] = data.owner_config
    if identity:
        sources.update((name, source(data, name)) for name in IDENTITY)
    if models:
        sources.update((f"models/{name}", data.models / name) for name in store.installed(data.models))
    return [(archive.measure(name, path), path) for name, path in sources.items()]


def _database_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def attempt(config: Config, now: float | None = None) -> Made:
    """A backup as the owner's settings ask (the daily one, or Back up now), its outcome kept for the Backups
    page and /health (`last`), then the old ones pruned; BackupError when it failed."""
    settings, data = config.backup, config.data
    try:
        made = make(config, identity=settings.identity, models=settings.models, now=now)
    except BackupError as err:
        _record(data, {"failed": time.time(), "error": str(err)})
        raise
    _record(data, {"failed": None, "error": None})
    prune(data, settings.keep, settings.days, now=now)
    return made


def _record(data: DataDir, outcome: dict) -> None:
    with contextlib.suppress(OSError):  # a full disk already failed the backup; its record may fail too
        files.write(data.backup_outcome, json.dumps(outcome).encode(), mode=0o600)


def last(data: DataDir) -> dict:
    """The newest verified backup's time (None: none yet) and the last failure since it, if any."""
    made = listing(data)
    try:
        outcome = json.loads(data.backup_outcome.read_text())
    except (OSError, ValueError):
        outcome = {}
    return {"good": made[0].created if made else None, "failed": outcome.get("failed"), "error": outcome.get("error")}


def health(data: DataDir, now: float | None = None) -> dict:
    """The last good backup and, when none succeeded for WARN_DAYS, a warning for /health and the System page."""
    good = last(data)["good"]
    age = (time.time() if now is None else now) - good if good else None
    warning = ("no backup has been made yet" if good is None else
               f"the last good backup is {int(age // 86400)} days old" if age > WARN_DAYS * 86400 else None)
    return {"last_good": good, "warning": warning}


def prune(data: DataDir, keep: int, days: int, now: float | None = None) -> list[str]:
    """Delete backups beyond the newest `keep` that are also older than `days` (the newest always stays)."""
    limit = (time.time() if now is None else now) - days * 86400
    doomed = [made for made in listing(data)[max(keep, 1):] if made.created < limit]
    for made in doomed:
        made.path.unlink(missing_ok=True)
    return [made.name for made in doomed]
