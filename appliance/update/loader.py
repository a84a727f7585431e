"""The boot side of an update: one small interface, one implementation per kind of firmware.

What the updater needs of a boot loader: put a verified release's boot files in place so that the next
boot tries it once (`install`, `reboot`), know whether this boot is such a trial (`trial`), keep it
once its assessment passed (`commit`), and go back to the known-good version when the assessment fails
or hangs (`fall_back`).  The image names its loader in /usr/lib/paladin-update/loader: systemd-boot with
boot counting on UEFI machines (systemdboot.py), the Raspberry Pi firmware's tryboot (tryboot.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tuf.api.metadata import TargetFile

from .. import facts
from .progress import UpdateError
from .systemdboot import SystemdBoot
from .tryboot import Tryboot

NAMED_IN = Path(facts.UPDATE_DEFINITIONS) / "loader"


class Loader(Protocol):
    phase: str  # status.json's phase while the boot files are installed
    board: str  # facts.BOARDS: which releases the box takes (their boot side is this loader's)

    def trial(self) -> bool:
        """Whether this boot is a trial that its assessment decides."""

    def entries(self) -> list[dict]:
        """The boot entries for the status page: version, state (good, trying, bad), selected."""

    def refusal(self) -> str | None:
        """Why this box cannot take an A/B update now, and what to do; None when it can."""

    def install(self, version: str, chosen: dict[str, TargetFile], arch: str) -> None:
        """Boot files of `version` written and checked against the signed ones, armed for one trial."""

    def reboot(self) -> None:
        """Reboot into the armed trial."""

    def commit(self) -> None:
        """This trial passed its assessment: make it the default."""

    def fall_back(self) -> None:
        """This trial failed or hung: reboot into the known-good version."""


LOADERS = {"systemd-boot": SystemdBoot, "tryboot": Tryboot}


def loader(named_in: Path = NAMED_IN) -> Loader:
    try:
        name = named_in.read_text().strip()
    except FileNotFoundError:
        name = "systemd-boot"  # images from before the Raspberry Pi name none
    if name in LOADERS:
        return LOADERS[name]()
    raise UpdateError(f"{named_in} names an unknown boot loader {name!r} (systemd-boot or tryboot)")
