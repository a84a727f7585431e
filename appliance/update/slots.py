"""The box's slots: root and verity partitions (and a Raspberry Pi's boot partitions), and writing a
verified release into the slots that are not running (systemd-sysupdate).

Root only: it reads the partition table and writes block devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import struct
from pathlib import Path

from tuf.api.metadata import TargetFile

from .. import command, facts
from .progress import UpdateError

DEFINITIONS = Path(facts.UPDATE_DEFINITIONS)
SYSUPDATE = "/usr/lib/systemd/systemd-sysupdate"  # not on PATH: a tool of systemd's, from systemd-container
PE_MACHINE = {spec["pe"]: arch for arch, spec in facts.ARCHES.items()}


def machine_arch() -> str:
    return facts.arch_of_machine(platform.machine())


def booted_root_uuid() -> str | None:
    """The booted root slot's PARTUUID (undashed): the first half of the UKI's root hash."""
    for arg in Path("/proc/cmdline").read_text().split():
        if arg.startswith("roothash="):
            return arg.partition("=")[2][:32].lower()
    return None


def slots(arch: str | None = None) -> list[dict]:
    """The root, verity and boot partitions: device, number, label, version, PARTUUID, size, whether booted.

    Read from the partition table on disk (sfdisk): udev's copy of a label lags behind a relabel by
    systemd-sysupdate while the disk is in use.
    """
    spec = facts.ARCHES[arch or machine_arch()]
    roots = {spec[kind]: kind for kind in ("root", "verity")}
    listing = json.loads(command.run(["lsblk", "--json", "-o", "PKNAME,PARTTYPE"]))["blockdevices"]
    disk = next((d["pkname"] for d in listing if (d.get("parttype") or "").lower() in roots), None)
    if disk is None:
        raise UpdateError("no disk with root slots found")
    table = json.loads(command.run(["sfdisk", "--json", f"/dev/{disk}"]))["partitiontable"]
    booted = booted_root_uuid()
    prefix = facts.slot_label("", "root")
    found = []
    for part in table["partitions"]:
        label = part.get("name", "")
        kind = roots.get(part["type"].lower())
        if part["type"].lower() == facts.BOOT_SLOT_TYPE and (label.startswith(prefix) or label == facts.EMPTY_SLOT):
            kind = "boot"  # a Raspberry Pi's boot slot (x86's ESP has the type, not a slot's label)
        if kind:
            version = facts.slot_version(label) if label.startswith(prefix) else None
            uuid = part["uuid"].replace("-", "").lower()
            found.append({"kind": kind, "disk": f"/dev/{disk}", "device": part["node"],
                          "number": int(re.search(r"(\d+)$", part["node"]).group(1)), "label": label,
                          "version": version, "uuid": uuid, "size": part["size"] * table.get("sectorsize", 512),
                          "booted": kind == "root" and uuid == booted})
    return found


def pe_arch(path: Path) -> str | None:
    with path.open("rb") as f:
        header = f.read(4096)
    if header[:2] != b"MZ" or len(header) < 0x40:
        return None
    offset = struct.unpack_from("<I", header, 0x3C)[0]
    if offset + 6 > len(header) or header[offset:offset + 4] != b"PE\0\0":
        return None
    return PE_MACHINE.get(struct.unpack_from("<H", header, offset + 4)[0], "unknown")


def sha256_prefix(path: Path, length: int) -> str:
    """SHA-256 of the first `length` bytes as stored: cached pages are dropped first, so a partition is
    read from the disk, not from a cache that may differ from it."""
    digest, left = hashlib.sha256(), length
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while left and (chunk := f.read(min(left, 1 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    if left:
        raise UpdateError(f"{path} is shorter than {length} bytes")
    return digest.hexdigest()


def sysupdate(definitions: str, version: str) -> None:
    command.run([SYSUPDATE, f"--definitions={DEFINITIONS / definitions}", "update", version])
    os.sync()  # it writes through the whole disk's page cache and does not flush; persist before checking


def _written_slot(version: str, kind: str, arch: str) -> dict | None:
    label = facts.slot_label(version, kind)
    return next((s for s in slots(arch) if s["kind"] == kind and s["label"] == label), None)


def check_slot(version: str, kind: str, info: TargetFile, arch: str) -> str | None:
    """What is wrong with the slot written for `kind`, or None when it holds exactly the signed bytes and
    zeros after them as far as the release's image spans, as its dm-verity hash tree has it.  The zeros are
    written here: a release carries its image only up to them, and an older, larger one may have left more."""
    slot = _written_slot(version, kind, arch)
    if slot is None:
        return f"no {kind} partition is labelled for {version}"
    custom = info.custom["paladin"]
    uuid = info.path.rsplit("_", 1)[1].split(".")[0].replace("-", "").lower()
    if slot["uuid"] != uuid:
        return f"{slot['device']} has PARTUUID {slot['uuid']}, the release needs {uuid}"
    span = custom.get("slot_length", custom["raw_length"])  # releases before trimming carried all of it
    if span > slot["size"]:
        return f"{slot['device']} holds {slot['size']} bytes, the release's {kind} image spans {span}"
    if sha256_prefix(Path(slot["device"]), custom["raw_length"]) != custom["raw_sha256"]:
        return f"{slot['device']} does not hold the signed {kind} image (SHA-256 differs)"
    clear(Path(slot["device"]), custom["raw_length"], span)
    return None


def clear(device: Path, start: int, end: int) -> None:
    """Zeros from `start` to `end` of `device`, written only where it holds something else: a slot that an
    earlier release of the same size left zero costs a read, not the writes an SD card wears out by."""
    fd = os.open(device, os.O_RDWR)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # what the disk holds, not a cache of it
        for at in range(start, end, 1 << 20):
            size = min(1 << 20, end - at)
            chunk = os.pread(fd, size, at)
            if len(chunk) < size:
                raise UpdateError(f"{device} is shorter than {end} bytes")
            if chunk.count(0) != size:
                os.pwrite(fd, bytes(size), at)
        os.fsync(fd)
    finally:
        os.close(fd)


def empty_slot(version: str, kind: str, arch: str) -> None:
    """Relabel a partly written slot `_empty` so systemd-sysupdate writes it again."""
    slot = _written_slot(version, kind, arch)
    if slot:
        command.run(["sfdisk", "--part-label", slot["disk"], slot["number"], facts.EMPTY_SLOT])


def room(arch: str, running: str) -> dict[str, int]:
    """The size of the slots an update may write: not the booted one, not the running version's."""
    free = [s for s in slots(arch) if not s["booted"] and s["version"] != running]
    return {kind: min((s["size"] for s in free if s["kind"] == kind), default=0) for kind in facts.SLOT_SUFFIX}
