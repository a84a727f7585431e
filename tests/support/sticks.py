"""USB sticks for a booted box: FAT and exFAT images made on this host (dosfstools, exfatprogs), plugged into
the guest's xHCI controller as qemu usb-storage devices, read-only like a stick's write-protect switch if
asked; mtools reads a FAT one back here, as any computer would."""

from __future__ import annotations

import subprocess
from pathlib import Path

MKFS = {"vfat": ["mkfs.vfat", "-n"], "exfat": ["mkfs.exfat", "-L"]}


def make(path: Path, filesystem: str, label: str, mib: int = 64) -> Path:
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run([*MKFS[filesystem], label, path], check=True, capture_output=True)
    return path


def qemu_args(sticks: list[tuple[Path, bool]]) -> list[str]:
    """One xHCI controller and a usb-storage device per (image, read-only) in `sticks`: the device
    "stickN" on the drive "stickN-drive", N counting from 0."""
    args = ["-device", "qemu-xhci,id=xhci"]
    for number, (image, read_only) in enumerate(sticks):
        args += ["-drive", f"if=none,id=stick{number}-drive,format=raw,file={image}{',readonly=on' if read_only else ''}",
                 "-device", f"usb-storage,bus=xhci.0,drive=stick{number}-drive,id=stick{number},removable=on"]
    return args


def slow_down(vm, number: int, write_bytes_per_second: int) -> None:
    """The stick writes no faster than this from now on (qemu's throttling of its drive)."""
    vm.monitor("block_set_io_throttle", device=f"stick{number}-drive", bps=0, bps_rd=0, bps_wr=write_bytes_per_second,
               iops=0, iops_rd=0, iops_wr=0)


def written(vm, number: int) -> int:
    """The bytes the box has written to the stick since its boot."""
    return next(drive["stats"]["wr_bytes"] for drive in vm.monitor("query-blockstats")
                if drive["device"] == f"stick{number}-drive")


def pull(vm, number: int) -> None:
    """The stick pulled out of the box, at once."""
    vm.monitor("device_del", id=f"stick{number}")
