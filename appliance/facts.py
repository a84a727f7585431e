"""Facts the build host and the box both rely on, written once.

Standard library only: `build.py` imports this before any virtual environment exists.  Where a
file in `image/`, `overlay/` or `units/` has to repeat one of these (a partition label, a path), a
test checks that it agrees (tests/test_facts.py).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath as P

IMAGE_ID = "paladin"
WEB_PORT = 8080  # the assistant's plain-HTTP API port inside the box
HTTPS_PORT = 443  # the web UI and both APIs
REDIRECT_PORT = 80  # plain HTTP, redirects to HTTPS
MDNS_NAME = "paladin.local"
SSH_PORT = 22  # only when the owner turns SSH on
MDNS_PORT = 5353

# The image architectures: the kernel's machine name, Debian's name, the UKI's PE machine type, and
# the GPT partition types of the root and verity slots (Discoverable Partitions Specification).
ARCHES = {
    "x86-64": {"machine": "x86_64", "debian": "amd64", "pe": 0x8664,
               "root": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "verity": "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"},
    "arm64": {"machine": "aarch64", "debian": "arm64", "pe": 0xAA64,
              "root": "b921b045-1df0-41c3-af44-4c6f280d3fae", "verity": "df3300ce-d69f-4c92-978c-9bfb0f38d820"},
}


def arch_of_machine(machine: str) -> str:
    return next(arch for arch, spec in ARCHES.items() if spec["machine"] == machine)


# Versions are dotted numbers, compared part by part, on the box (downgrade refusal) and by
# systemd-boot; '_' and '+' would collide with slot labels and the boot counter's file names.
VERSION = re.compile(r"\d+(\.\d+)*")


def version_key(version: str) -> tuple[int, ...]:
    if not VERSION.fullmatch(version):
        raise ValueError(f"{version!r} is not a release version (dotted numbers, like 2026.11.26 or 3)")
    return tuple(int(part) for part in version.split("."))


def image_name(version: str, flavour: str) -> str:
    """The disk image's file stem; its split artifacts (root, verity, UKI or boot) carry the same stem."""
    return f"{IMAGE_ID}_{version}_{flavour}"


def uki_name(version: str) -> str:
    return f"{IMAGE_ID}_{version}"


SLOT_SUFFIX = {"root": "", "verity": "_verity", "boot": "_boot"}
# A Raspberry Pi's boot partitions A and B (FAT: firmware, kernel, initrd, device trees, cmdline.txt with
# the root hash) have the EFI system partition's type: the Pi's bootloader boots basic data or EFI system
# partitions of a GPT, and computers hide EFI system partitions.
BOOT_SLOT_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


def slot_label(version: str, kind: str) -> str:
    return f"{IMAGE_ID}_{version}{SLOT_SUFFIX[kind]}"


def slot_version(label: str) -> str:
    """The version in a slot's label, whichever kind it is."""
    version = label.removeprefix(f"{IMAGE_ID}_")
    for suffix in filter(None, SLOT_SUFFIX.values()):
        version = version.removesuffix(suffix)
    return version


EMPTY_SLOT = "_empty"
DATA_LABEL = "paladin-data"
# The small FAT partition a computer shows as a drive named PALADIN when the flashed medium is put in it
# (Microsoft basic data: Windows and macOS show it, and show no ESP): where an owner without a screen
# writes a setup code (docs/first-boot.md), and on a Raspberry Pi also the firmware's autoboot.txt.
CARD_LABEL = "PALADIN"
CARD_TYPE = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
CARD_MOUNT = P("/run/paladin-card")  # mounted on access only (fstab: automount), so it is clean when pulled
CARD_CODE = "setup-code.txt"
CARD_CODE_LIMIT = 1024  # bytes: a code is a few words
CARD_HANDED = P("/run/paladin-card-code/code")  # where paladin-card leaves it for the first-boot unit

# What one release is: three TUF targets (see appliance/update/bundle.py for the offline form), the root and
# verity images and the board's boot side: a UKI for UEFI machines, a boot partition for the Raspberry Pi.
KINDS = ("root", "verity", "uki", "boot")
# The boards an image is built for (build.py image --board), their architectures, their boot side's kind.
BOARDS = {"uefi": ("x86-64", "arm64"), "rpi": ("arm64",)}
BOOT_KIND = {"uefi": "uki", "rpi": "boot"}


def flavour(arch: str, board: str) -> str:
    """What an image runs on, in its name and its releases' (a release's `arch`): a Pi's root differs from
    a UEFI arm64 box's (its kernel's modules), so no box may take the other's."""
    return arch if board == "uefi" else f"{arch}-{board}"


def release_kinds(board: str) -> tuple[str, ...]:
    return "root", "verity", BOOT_KIND[board]


def target_name(flavour: str, kind: str, version: str, uuid: str = "") -> str:
    if kind == "uki":
        return f"{flavour}/{uki_name(version)}.efi"
    return f"{flavour}/{IMAGE_ID}_{version}_{uuid}.{kind}.raw.gz"


# Paths and users on the box.
SERVICE_USER = "paladin"
DATA_DIR = P("/var/lib/paladin")
UPDATE_STATE = P("/var/lib/paladin-update")
UPDATE_DEFINITIONS = P("/usr/lib/paladin-update")
TRUSTED_ROOT = UPDATE_DEFINITIONS / "root.json"
SYSTEM_CONFIG = P("/etc/paladin/paladin.yaml")
# Root's: the owner's firewall and SSH settings (only the firewall helper writes them), the last ruleset
# that loaded, the helper's last outcome, SSH's host keys and authorized key.
FIREWALL_STATE = P("/var/lib/paladin-firewall")
# Root's: the USB sticks the stick helper last saw, and its last outcome (appliance/backup/stick.py).
STICK_STATE = P("/var/lib/paladin-stick")
# The resource governor's history (its own user's), and the socket the assistant reaches it on.
GOVERNOR_USER = "paladin-governor"
GOVERNOR_STATE = "/var/lib/paladin-governor"
GOVERNOR_SOCKET = "/run/paladin-governor/socket"
