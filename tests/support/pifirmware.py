"""A SIMULATION of the Raspberry Pi firmware's choice of boot partition, for tests where no Pi exists.

It follows the documented rules (raspberrypi/documentation: autoboot.adoc, config_txt conditional
filters, device-tree.adoc): the first partition's `autoboot.txt` is read up to 512 bytes; `[all]`,
`[none]` and `[tryboot]` filters decide which lines apply, a later `boot_partition` overriding an
earlier one; `[tryboot]` applies only when the one-shot tryboot flag was set, which the firmware clears
before it starts.  Partition 0, or no readable `autoboot.txt`, means the first bootable FAT partition;
a partition is bootable when it holds `start4.elf` (Pi 4) or `config.txt` (Pi 5).  The chosen partition
and the flag are left in a device tree directory as /proc/device-tree shows them.
"""

from __future__ import annotations

from pathlib import Path


def choose(autoboot: bytes | None, tryboot: bool) -> int:
    """The boot_partition that autoboot.txt selects (0 = the first bootable one)."""
    partition, applies = 0, True
    for line in (autoboot or b"")[:512].decode("ascii", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            applies = {"all": True, "none": False, "tryboot": tryboot}.get(line[1:-1], False)
        elif applies and line.startswith("boot_partition="):
            try:
                partition = int(line.partition("=")[2])
            except ValueError:
                pass
    return partition


class Firmware:
    """A card of FAT partitions (directories p1, p2, …) and the device tree the firmware leaves."""

    def __init__(self, card: Path, device_tree: Path, soc: str = "brcm,bcm2712", built: int = 1_735_689_600):
        self.card, self.device_tree = card, device_tree
        (device_tree / "chosen/bootloader").mkdir(parents=True, exist_ok=True)
        (device_tree / "compatible").write_bytes(f"raspberrypi,5-model-b\0{soc}\0".encode())
        self._cell("build_timestamp", built)

    def partition(self, number: int) -> Path:
        return self.card / f"p{number}"

    def bootable(self, number: int) -> bool:
        return any((self.partition(number) / name).is_file() for name in ("start4.elf", "config.txt"))

    def boot(self, tryboot: bool = False) -> int | None:
        """Power on (or reset): the partition booted, or None when the firmware finds nothing to boot."""
        try:
            autoboot = (self.partition(1) / "autoboot.txt").read_bytes()
        except OSError:
            autoboot = None
        number = choose(autoboot, tryboot)
        if number == 0:
            number = next((n for n in range(1, 129) if self.partition(n).is_dir() and self.bootable(n)), None)
        if number is None or not self.bootable(number):
            return None
        self._cell("partition", number)
        self._cell("tryboot", int(tryboot))
        return number

    def _cell(self, name: str, value: int) -> None:
        (self.device_tree / "chosen/bootloader" / name).write_bytes(value.to_bytes(4, "big"))
