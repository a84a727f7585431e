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
    """One xHCI controller and a usb-storage device per (image, read-only) in `sticks`."""
    args = ["-device", "qemu-xhci,id=xhci"]
    for number, (image, read_only) in enumerate(sticks):
        args += ["-drive", f"if=none,id=stick{number},format=raw,file={image}{',readonly=on' if read_only else ''}",
                 "-device", f"usb-storage,bus=xhci.0,drive=stick{number},removable=on"]
    return args
