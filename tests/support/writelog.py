"""Every state a power cut can leave a disk in, from the log of its writes (qemu's `blklogwrites` driver,
which writes Linux's dm-log-writes format: a super block, then per write a header sector and its data).

`states` replays the writes onto a copy of the disk as it was before them, one sector at a time in the
order the guest's writes reached the disk, and yields the disk after each: a cut before any sector, inside
a multi-sector write, or between writes.  It does not try reorderings of the writes between two flushes
(a disk's cache may persist them out of order); docs/benchmarks.md says so where it reports.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0x6A736677736872
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")  # sector, sectors, flags, data length
FLUSH, DISCARD = 1 << 0, 1 << 2


@dataclass(frozen=True)
class Write:
    sector: int
    data: bytes


def writes(log: Path) -> tuple[int, list[Write | None]]:
    """The log's sector size, and its entries in order: a write, or None for a flush."""
    raw = log.read_bytes()
    magic, version, count, size = SUPER.unpack_from(raw)
    if magic != MAGIC or version != 1:
        raise ValueError(f"{log} is not a dm-log-writes log (magic {magic:#x}, version {version})")
    found, at = [], size
    for _ in range(count):
        sector, sectors, flags, _ = ENTRY.unpack_from(raw, at)
        at += size
        if flags & FLUSH:
            found.append(None)
        if sectors and not flags & DISCARD:
            found.append(Write(sector, raw[at:at + sectors * size]))
            at += sectors * size
    return size, found


def states(before: Path, log: Path, work: Path) -> Iterator[tuple[int, Path]]:
    """(sectors applied, the disk) after each sector of the logged writes, from none to all."""
    size, logged = writes(log)
    disk = work / "cut.img"
    shutil.copyfile(before, disk)
    applied = 0
    yield applied, disk
    with disk.open("r+b") as f:
        for write in filter(None, logged):
            for offset in range(0, len(write.data), size):
                f.seek(write.sector * size + offset)
                f.write(write.data[offset:offset + size])
                f.flush()
                applied += 1
                yield applied, disk
