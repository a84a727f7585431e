"""`paladin-stick`: USB sticks for backups (root; its path unit starts it when the assistant asks through the
request channel): look for the sticks plugged into the box, and copy a backup the box holds onto one.

The assistant names a stick only by what a look said of it (its file system's UUID) and a backup only by its
file name; the helper finds both itself.  A stick is a USB disk's partition (or the whole disk) holding FAT
or exFAT that is none of the box's own disks (the box may run from a stick).  It is mounted in the helper's
own mount namespace without devices, set-id programs or executables, and unmounted before the helper ends,
so the stick may be pulled whenever no copy runs.  A copy is written as PAL-adin/NAME.partial, flushed, read
back from the stick and compared, and only then named NAME: a name ending in .age on a stick is whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import channel, command, facts, files, logs
from ..layout import BACKUP_NAME, DataDir, StickState
from ..verbs import arg, parser, verb

log = logging.getLogger(__name__)
FOLDER = "PAL-adin"  # on the stick: where backups go, beside whatever else the owner keeps there
FILESYSTEMS = ("vfat", "exfat")
SLACK = 1 << 20  # what the file system needs beside the file (FAT clusters, directory entries)
CHUNK = 1 << 20
MOUNT_SECONDS = 60
# A stick that goes away under a write, or fails: EIO from the block layer, ENODEV and ENXIO once it is gone.
GONE = (errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESHUTDOWN)


class StickError(RuntimeError):
    """What the owner is told: the stick is gone, write-protected, full, or not one the box can use."""


@dataclass(frozen=True)
class Stick:
    id: str  # the file system's UUID: how the assistant names it
    device: str
    label: str
    filesystem: str
    bytes: int
    read_only: bool
    free: int = 0
    backups: tuple[tuple[str, int], ...] = ()  # (name, bytes) of the backups in its PAL-adin folder


def _disks_of(block: Path) -> set[str]:
    """The disks a block device in /sys/class/block lives on (through device mapper's layers)."""
    slaves = block / "slaves"
    if slaves.is_dir() and any(slaves.iterdir()):
        return set().union(*(_disks_of(Path("/sys/class/block") / s.name) for s in slaves.iterdir()))
    return {block.resolve().parent.name if (block / "partition").exists() else block.name}


def _own_disks(data: DataDir) -> set[str]:
    """The disks the box runs from: its root's (verity's, underneath) and its data partition's."""
    own = set()
    for path in ("/", data.root):
        device = os.stat(path).st_dev
        own |= _disks_of(Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}").resolve())
    return own


def _probe(device: str) -> dict[str, str]:
    said = command.run(["blkid", "--probe", "--output", "export", device], check=False, timeout=30)
    return dict(line.split("=", 1) for line in said.splitlines() if "=" in line)


def candidates(data: DataDir) -> list[Stick]:
    """The FAT and exFAT file systems on USB disks that are not the box's own, unmounted."""
    own, found = _own_disks(data), []
    for disk in sorted(Path("/sys/block").iterdir()):
        if "/usb" not in str(disk.resolve()) or disk.name in own:
            continue
        parts = sorted(p for p in disk.iterdir() if (p / "partition").exists()) or [disk]
        read_only = (disk / "ro").read_text().strip() == "1"
        for part in parts:
            probed = _probe(f"/dev/{part.name}")
            if probed.get("TYPE") in FILESYSTEMS and probed.get("UUID"):
                found.append(Stick(probed["UUID"], f"/dev/{part.name}", probed.get("LABEL", "")[:64],
                                   probed["TYPE"], int((part / "size").read_text()) * 512, read_only))
    return found


@contextlib.contextmanager
def mounted(stick: Stick, mount: Path, writable: bool):
    """The stick's file system at `mount` for the block's length; unmounted after, even when the stick
    went away (lazily then)."""
    mount.mkdir(parents=True, exist_ok=True)
    options = ("rw" if writable else "ro") + ",nosuid,nodev,noexec,noatime"
    try:  # -w: fail instead of falling back to read-only, as mount does on a write-protected stick
        command.run(["mount", "-w" if writable else "-r", "-t", stick.filesystem, "-o", options, stick.device, mount],
                    timeout=MOUNT_SECONDS)
    except command.CommandError as err:
        raise StickError(f"the stick {stick.label or stick.id} cannot be {'written' if writable else 'read'} "
                         f"({err})") from None
    try:
        yield mount
    finally:
        try:
            command.run(["umount", mount], timeout=MOUNT_SECONDS)
        except command.CommandError:
            command.run(["umount", "--lazy", mount], check=False, timeout=MOUNT_SECONDS)


def look(data: DataDir, mount: Path) -> list[Stick]:
    """Every stick, with its free space and the backups on it."""
    sticks = []
    for stick in candidates(data):
        try:
            with mounted(stick, mount, writable=False) as top:
                space = os.statvfs(top)
                folder = top / FOLDER
                backups = tuple((p.name, p.stat().st_size) for p in sorted(folder.iterdir())
                                if BACKUP_NAME.fullmatch(p.name)) if folder.is_dir() else ()
            sticks.append(dataclasses.replace(stick, free=space.f_bavail * space.f_frsize, backups=backups))
        except (StickError, OSError) as err:
            log.warning("the stick %s on %s cannot be read: %s", stick.id, stick.device, err)
    return sticks


def copy(data: DataDir, mount: Path, stick_id: str, name: str) -> str:
    """Copy the box's backup `name` onto the stick `stick_id`, checked; what the owner is told."""
    if not BACKUP_NAME.fullmatch(name):
        raise StickError(f"there is no backup {name[:100]!r} on the box")
    stick = next((s for s in candidates(data) if s.id == stick_id), None)
    if stick is None:
        raise StickError("that stick is no longer plugged in: look for sticks again")
    if stick.read_only:
        raise StickError(f"the stick {stick.label or stick.id} is write-protected (a switch on its side?): "
                         "nothing was written")
    try:
        source = files.open_beneath(data.root, data.beneath(data.backups / name))
    except (FileNotFoundError, files.NotPlain):
        raise StickError(f"there is no backup {name} on the box") from None
    with source, mounted(stick, mount, writable=True) as top:
        size = os.fstat(source.fileno()).st_size
        space = os.statvfs(top)
        if space.f_bavail * space.f_frsize < size + SLACK:
            raise StickError(f"the stick has {space.f_bavail * space.f_frsize} bytes free; the backup needs {size}")
        folder = top / FOLDER
        folder.mkdir(exist_ok=True)
        partial = folder / f"{name}.partial"
        try:
            written = _write(source, partial)
            if _digest_of(partial) != written:
                raise StickError("the copy on the stick reads back different from the backup (a failing stick?): "
                                 "it was deleted; try another stick")
            files.commit(partial, folder / name)
        except OSError as err:
            with contextlib.suppress(OSError):
                partial.unlink()
            if err.errno == errno.ENOSPC:
                raise StickError("the stick filled up during the copy: nothing was kept on it") from None
            if err.errno in GONE:
                raise StickError("the stick went away or failed during the copy: nothing is on it under that name; "
                                 "plug it in again and copy again") from None
            raise
        except StickError:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    return f"{name} copied to the stick {stick.label or stick.id} and checked"


def _write(source, dest: Path) -> str:
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # read back from the stick, not the cache
    return digest.hexdigest()


def _digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record(state: StickState, sticks: list[Stick] | None, action: str, ok: bool, message: str) -> None:
    """What the Backups page shows: the sticks as last seen, and how the last request ended."""
    kept = json.loads(state.sticks.read_text()) if state.sticks.exists() else {"sticks": []}
    listed = kept["sticks"] if sticks is None else [dataclasses.asdict(s) for s in sticks]
    files.write(state.sticks, json.dumps({"sticks": listed, "outcome": {
        "action": action, "ok": ok, "message": message, "time": time.time()}}).encode(), mode=0o644)


def cmd_request(args, state: StickState) -> None:
    """The assistant's pending request: a look, or a copy and then a look (so the page shows the copy)."""
    data, mount = DataDir(Path(args.data_dir)), state.mount
    action = "request"
    try:
        request = channel.take(data.root, "stick")
        if request is None:
            return
        action = request.action
        message = copy(data, mount, request.stick, request.backup) if action == "copy" else "looked"
    except (channel.RequestError, StickError, OSError, command.CommandError) as err:
        log.error("%s: %s", action, err)
        _record(state, None, action, False, str(err))
        return
    _record(state, look(data, mount), action, True, message)
    log.info("%s", message)


def cmd_look(args, state: StickState) -> None:
    print(json.dumps([dataclasses.asdict(s) for s in look(DataDir(Path(args.data_dir)), state.mount)], indent=1))


VERBS = {
    "request": verb(cmd_request, "do what the owner asked for in the web UI (look for sticks, or copy a backup)"),
    "look": verb(cmd_look, "print the USB sticks the box could write backups to"),
}
COMMON = (arg("--data-dir", default=str(facts.DATA_DIR), help="the assistant's data directory"),
          arg("--state", default=str(StickState().root), help="the helper's state directory"))


def main(argv: list[str] | None = None) -> None:
    args = parser("paladin-stick", __doc__, VERBS, COMMON).parse_args(argv)
    logs.setup()
    VERBS[args.verb].run(args, StickState(Path(args.state)))
