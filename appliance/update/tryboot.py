"""The Raspberry Pi firmware's A/B boot: `autoboot.txt` with `tryboot_a_b=1` (Pi 4 and Pi 5).

The image's first partition is a small FAT holding `autoboot.txt` (the PALADIN drive, docs/first-boot.md); the firmware boots its `[all]`
section's `boot_partition` by default, and its `[tryboot]` section's once after `reboot "0 tryboot"` (a
one-shot flag it clears before starting, so any reset falls back to the default).  There is no boot
counter: the box itself keeps a trial by rewriting `autoboot.txt` once the trial passed its
assessment, and a trial that fails, hangs (the hardware watchdog resets it) or loses power is simply
not kept.  The firmware tells the running system where it booted from in the device tree
(/proc/device-tree/chosen/bootloader: `tryboot`, `partition`, `build_timestamp`).

Whatever a power cut interrupts, `autoboot.txt` names a complete, verified boot partition by default: it
is rewritten in place, the same length in the same sector, and a boot partition is only named in
`[tryboot]` after it was written and checked.  A rename is no atomic switch on a FAT: Linux's vfat writes
the renamed entry's cluster only when it writes the inode back, after the old cluster was freed, so for
up to half a minute after a "durable" replace the file named a free cluster (bench `tryboot` found 15 of
26 cut states so; docs/benchmarks.md).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import TargetFile

from .. import command, facts
from .progress import UpdateError
from .slots import check_slot, slots, sysupdate

AUTOBOOT = Path(facts.CARD_MOUNT) / "autoboot.txt"  # the first partition is the PALADIN drive
DEVICE_TREE = Path("/proc/device-tree")
# The image's kernel module that passes `reboot "0 tryboot"` to the firmware (image/mkosi.profiles/rpi/tryboot):
# Debian's kernel does not, and without it the reboot that should start a trial starts the default again.
MODULE = Path("/sys/module/paladin_tryboot")
AUTOBOOT_LIMIT = 512  # the firmware reads no more (raspberrypi/documentation, autoboot.adoc)
# The oldest bootloader EEPROMs whose tryboot_a_b works, by SoC: the Pi 4's came with 2022-11-25; the
# Pi 5 needed the fixes of 2023-12-14 and 2024-04-17.
OLDEST_BOOTLOADER = {"brcm,bcm2711": ("Raspberry Pi 4", "2022-11-25"),
                     "brcm,bcm2712": ("Raspberry Pi 5", "2024-04-17")}
OURS = re.compile(rb"\[all\]\ntryboot_a_b=1\nboot_partition=([1-9])\n\[tryboot\]\nboot_partition=([1-9])\n")


@dataclass(frozen=True)
class Autoboot:
    """What autoboot.txt says, in the one form this box writes: always the same length (one digit each)."""
    default: int
    trial: int

    def __post_init__(self):
        if not (1 <= self.default <= 9 and 1 <= self.trial <= 9):
            raise UpdateError(f"boot partitions {self.default} and {self.trial}: this box's are 2 and 3")

    def render(self) -> bytes:
        return (f"[all]\ntryboot_a_b=1\nboot_partition={self.default}\n"
                f"[tryboot]\nboot_partition={self.trial}\n").encode()

    @classmethod
    def parse(cls, text: bytes) -> Autoboot:
        if not (found := OURS.fullmatch(text)):
            raise UpdateError(f"autoboot.txt is not in the form this box writes: {text[:200]!r}")
        return cls(int(found[1]), int(found[2]))


class Tryboot:
    phase = "boot"
    board = "rpi"

    def __init__(self, autoboot: Path = AUTOBOOT, device_tree: Path = DEVICE_TREE, module: Path = MODULE):
        self.autoboot, self.device_tree, self.module = autoboot, device_tree, module

    def _cell(self, name: str) -> int | None:
        """A 32-bit property the firmware left under /chosen/bootloader, or None when it left none."""
        try:
            raw = (self.device_tree / "chosen/bootloader" / name).read_bytes()
        except OSError:
            return None
        return int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None

    def booted(self) -> int:
        if (partition := self._cell("partition")) is None:
            raise UpdateError("the firmware did not say which partition it booted (no device-tree "
                              "chosen/bootloader/partition): is this a Raspberry Pi?")
        return partition

    def read(self) -> Autoboot:
        try:
            with self.autoboot.open("rb") as f:
                return Autoboot.parse(f.read(AUTOBOOT_LIMIT + 1))
        except OSError as err:
            raise UpdateError(f"cannot read {self.autoboot}: {err.strerror}") from None

    def write(self, autoboot: Autoboot) -> None:
        """In place: the same cluster and length, so one sector changes and the directory does not."""
        text = autoboot.render()
        fd = os.open(self.autoboot, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            if (size := os.fstat(fd).st_size) != len(text):
                raise UpdateError(f"{self.autoboot} is {size} bytes, not the {len(text)} this box writes: "
                                  "it is not the one the image made")
            os.pwrite(fd, text, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def trial(self) -> bool:
        """Booted with the tryboot flag and not kept yet (a kept trial stays flagged until it reboots)."""
        if self._cell("tryboot") != 1:
            return False
        try:
            return self.read().default != self.booted()
        except UpdateError:
            return True  # unsure: a failed assessment should then fall back rather than stay

    def entries(self) -> list[dict]:
        autoboot, booted, trying = self.read(), self._cell("partition"), self.trial()
        return [{"file": s["label"], "version": s["version"], "partition": s["number"],
                 "state": "good" if s["number"] == autoboot.default else
                          "trying" if s["number"] == autoboot.trial and trying else "spare",
                 "selected": s["number"] == booted}
                for s in slots() if s["kind"] == "boot"]

    def refusal(self) -> str | None:
        soc = next((s for s in self._compatible() if s in OLDEST_BOOTLOADER), None)
        if soc is None:
            return "this is not a Raspberry Pi 4 or 5 (device-tree compatible), which the image's boot is for"
        board, oldest = OLDEST_BOOTLOADER[soc]
        built = self._cell("build_timestamp")
        when = None if built is None else time.strftime("%Y-%m-%d", time.gmtime(built))
        if when is None or when < oldest:
            return (f"this {board}'s bootloader is from {when or 'an unknown date'}; A/B updates need one from "
                    f"{oldest} or later. "
                    "Update it with Raspberry Pi Imager (Misc utility images, Bootloader) or rpi-eeprom, then "
                    "update again")
        if not self.module.is_dir():
            return ("this box's kernel cannot pass the tryboot flag to the firmware (its module "
                    f"{MODULE.name} is not loaded), so an update would never be tried. Restart the box; "
                    "if this stays, write the card again (docs/updates.md, Recovery)")
        if self.trial():
            return "this boot is a trial still being assessed; update once it has been kept"
        return None

    def _compatible(self) -> list[str]:
        try:
            return (self.device_tree / "compatible").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return []

    def install(self, version: str, chosen: dict[str, TargetFile], arch: str) -> None:
        booted = self.booted()
        # First no trial can reach the partition about to be written, half-written or not.
        self.write(Autoboot(booted, booted))
        sysupdate("boot.d", version)
        if problem := check_slot(version, "boot", chosen["boot"], arch):
            raise UpdateError(f"the written boot partition failed verification: {problem}")
        written = next(s["number"] for s in slots(arch) if s["kind"] == "boot" and s["version"] == version)
        self.write(Autoboot(booted, written))

    def reboot(self) -> None:
        # the kernel's reboot argument: partition 0 (the default), then the flag (the module above passes it on)
        command.run(["systemctl", "reboot", "--reboot-argument=0 tryboot"])

    def commit(self) -> None:
        autoboot, booted = self.read(), self.booted()
        if booted == autoboot.default:
            return  # not a trial, or kept already (this ran before, or a power cut came after the rename)
        if not self.trial() or booted != autoboot.trial:
            raise UpdateError(f"this boot (partition {booted}) is neither autoboot.txt's default "
                              f"({autoboot.default}) nor its trial ({autoboot.trial}): nothing is changed")
        self.write(Autoboot(booted, autoboot.default))

    def fall_back(self) -> None:
        if self.trial():  # the flag is gone already: a plain reboot is the known-good default
            command.run(["systemctl", "--no-block", "reboot"])
