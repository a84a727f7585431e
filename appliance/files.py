"""Durable writes: after a power cut a file holds its new content or its old one, never a torn mix.

Every piece of state the box writes goes through here: the bytes go to `NAME.partial`, are fsync'ed,
renamed over `NAME`, and the directory is fsync'ed so that the rename itself survives (ext4 does not
promise that a rename without it is on disk).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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


def fsync_directory(directory: Path) -> None:
    """Make a rename or deletion in `directory` durable."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def commit(written: Path, dest: Path) -> Path:
    """Make the complete file `written` (in dest's directory) durable as `dest`."""
    _fsync(written)
    os.replace(written, dest)
    fsync_directory(dest.parent)
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


class NotPlain(OSError):
    """What a less trusted process left is not a plain file reachable without links."""


def _parent_beneath(top: Path, relative: str | Path) -> tuple[int, str]:
    """An open descriptor of `top/relative`'s directory, reached without following any link below
    `top`, and the last component's name."""
    parts = PurePosixPath(relative).parts
    if not parts or any(part in ("/", ".", "..") for part in parts):
        raise NotPlain(f"{relative} is not a path below {top}")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
    except FileNotFoundError:
        os.close(fd)
        raise
    except OSError as err:  # a link where a directory should be (ELOOP, ENOTDIR)
        os.close(fd)
        raise NotPlain(f"{top / relative}: {err.strerror} on the way") from None
    return fd, parts[-1]


def open_beneath(top: Path, relative: str | Path) -> BinaryIO:
    """`top/relative` opened for reading, where everything below `top` may have been written by a less
    trusted process: no component may be a symbolic link (the walk goes directory by directory with
    O_NOFOLLOW, so a link swapped in cannot lead a root helper elsewhere) and the file must be a
    plain one, never a FIFO that blocks or a device that never ends.  FileNotFoundError when it is
    missing, NotPlain otherwise."""
    fd, name = _parent_beneath(top, relative)
    try:
        opened = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except FileNotFoundError:
        raise
    except OSError as err:  # a link (ELOOP) or worse
        raise NotPlain(f"{top / relative} is not a plain file ({err.strerror})") from None
    finally:
        os.close(fd)
    f = os.fdopen(opened, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise NotPlain(f"{top / relative} is not a plain file")
    return f


def remove_beneath(top: Path, relative: str | Path) -> None:
    """Delete the file or tree `top/relative` that a less trusted process wrote, following no link on
    the way to it or inside it (shutil.rmtree with a directory descriptor never does)."""
    try:
        fd, name = _parent_beneath(top, relative)
    except FileNotFoundError:
        return
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
    finally:
        os.close(fd)
