"""Durable writes: after a power cut a file holds its new content or its old one, never a torn mix.

Every piece of state the box writes goes through here: the bytes go to `NAME.partial`, are fsync'ed,
renamed over `NAME`, and the directory is fsync'ed so that the rename itself survives (ext4 does not
promise that a rename without it is on disk).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Kept free on the data partition, whatever a download or an upload wants: the database, the journal
# and the updater's state must always be writable.
RESERVE_BYTES = 64 * 2**20


def partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(written: Path, dest: Path) -> Path:
    """Make the complete file `written` (in dest's directory) durable as `dest`."""
    _fsync(written)
    os.replace(written, dest)
    _fsync(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    return dest


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """`path` holds `data`, durably; `mode` is set before the file appears under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = partial(path)
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(staged, mode)  # not left to the umask: state files are read by the unprivileged assistant
        return commit(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def shortfall(directory: Path, needed: int) -> str | None:
    """Why `needed` more bytes may not be written under `directory`, or None when they may."""
    free = shutil.disk_usage(directory).free
    if needed + RESERVE_BYTES <= free:
        return None
    return (f"not enough space on the data partition: {needed} bytes needed, {free} free "
            f"({RESERVE_BYTES // 2**20} MiB are kept for the database)")
