"""systemd-boot with boot counting, on UEFI machines.

A release's UKI goes onto the ESP with 3 tries in its name (Boot Loader Specification); systemd-boot
counts them down, systemd-bless-boot.service keeps the entry once boot-complete.target is reached, and
when the tries run out systemd-boot boots the previous version by itself.  Root only: it reads the
firmware's variables and writes the ESP.
"""

from __future__ import annotations

from pathlib import Path

from tuf.api.metadata import TargetFile

from .. import command, facts
from .progress import UpdateError
from .slots import sha256_prefix, sysupdate

EFIVARS = Path("/sys/firmware/efi/efivars")
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's vendor GUID for its EFI variables
ESP_MOUNTS = (Path("/boot"), Path("/efi"))


def _efivar(name: str) -> str | None:
    path = EFIVARS / f"{name}-{LOADER_GUID}"
    try:
        return path.read_bytes()[4:].decode("utf-16-le").rstrip("\0")
    except OSError:
        return None


def esp() -> Path:
    for mount in ESP_MOUNTS:
        if (mount / "EFI").is_dir():
            return mount
    raise UpdateError("the EFI system partition is not mounted at /boot or /efi")


class SystemdBoot:
    phase = "uki"
    board = "uefi"

    def trial(self) -> bool:
        return _efivar("LoaderBootCountPath") is not None

    def entries(self) -> list[dict]:
        """The UKIs on the ESP and their boot-assessment state (the counters in their names)."""
        selected = _efivar("LoaderEntrySelected")
        entries = []
        prefix = facts.uki_name("")
        for path in sorted((esp() / "EFI/Linux").glob(f"{prefix}*.efi")):
            name, _, counter = path.stem.partition("+")
            left, _, done = counter.partition("-")
            state = "good" if not counter else ("bad" if left == "0" else "trying")
            entries.append({"file": path.name, "version": name.removeprefix(prefix), "state": state,
                            "tries_left": int(left) if left else None, "tries_done": int(done) if done else None,
                            "selected": selected is not None and selected.split("+")[0].removesuffix(".efi") == name})
        return entries

    def refusal(self) -> str | None:
        return None

    def install(self, version: str, chosen: dict[str, TargetFile], arch: str) -> None:
        sysupdate("uki.d", version)
        signed = chosen["uki"].custom["paladin"]
        installed = [k for k in self.entries() if k["version"] == version]
        if not installed or sha256_prefix(esp() / "EFI/Linux" / installed[0]["file"],
                                          signed["raw_length"]) != signed["raw_sha256"]:
            raise UpdateError(f"the UKI of {version} on the ESP does not match the signed one")

    def reboot(self) -> None:
        command.run(["systemctl", "reboot"])

    def commit(self) -> None:
        """Nothing to do here: systemd-bless-boot.service keeps the entry at boot-complete.target."""

    def fall_back(self) -> None:
        if self.trial():  # an uncounted boot is the known-good one already: rebooting would not help
            command.run(["systemctl", "--no-block", "reboot"])
