"""Which release a box takes: its architecture and board, only forward, never one that failed here, and one whose
images fit its slots; and the UKI built for it.  Judged on metadata python-tuf has already checked
(trust.py)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import TargetFile, Targets

from .. import facts
from .progress import UpdateError
from .slots import pe_arch


@dataclass(frozen=True)
class Box:
    """What this box can take: its architecture, the running version, the sizes of the slots an
    update may write, releases it will not take again (they failed their boot assessment), and its board
    (facts.BOARDS: which boot side its releases carry)."""
    arch: str
    running: str
    room: dict[str, int]
    failed: frozenset[str] = frozenset()
    board: str = "uefi"

    @property
    def flavour(self) -> str:
        return facts.flavour(self.arch, self.board)


def choose(targets: Targets, box: Box) -> tuple[str, dict[str, TargetFile]]:
    """The newest complete release for the box; refuses other architectures, downgrades and a
    release that already failed here."""
    flavour, running = box.flavour, box.running
    releases_by_flavour: dict[str, dict[str, dict[str, TargetFile]]] = {}
    for info in targets.targets.values():
        custom = info.custom.get("paladin")
        if isinstance(custom, dict) and custom.get("kind") in facts.KINDS:
            with contextlib.suppress(ValueError):
                facts.version_key(str(custom.get("version")))
                releases_by_flavour.setdefault(custom.get("arch"), {}).setdefault(
                    custom["version"], {})[custom["kind"]] = info
    mine = releases_by_flavour.get(flavour)
    if not mine:
        others = ", ".join(f"{a} {max(v, key=facts.version_key)}" for a, v in sorted(releases_by_flavour.items()))
        raise UpdateError(f"the repository has no release for this box's architecture {flavour} "
                          f"(it has: {others or 'nothing'})")
    version = max(mine, key=facts.version_key)
    if facts.version_key(version) < facts.version_key(running):
        raise UpdateError(f"refusing a downgrade: the repository's newest release is {version}, "
                          f"this box runs {running}")
    if version == running:
        raise UpdateError(f"already up to date: {running} is the newest release")
    if version in box.failed:
        raise UpdateError(f"release {version} failed its boot assessment on this box; waiting for a newer one "
                          f"(install it by hand to try it again)")
    kinds = facts.release_kinds(box.board)
    missing = set(kinds) - set(mine[version])
    if missing:
        raise UpdateError(f"release {version} is incomplete: no {', '.join(sorted(missing))} target")
    return version, {kind: mine[version][kind] for kind in kinds}


def for_box(targets: Targets, box: Box) -> tuple[str, dict[str, TargetFile]]:
    """The release `box` takes from `targets` (choose), refused if an image of it is larger than its slot."""
    version, chosen = choose(targets, box)
    for kind in chosen.keys() & facts.SLOT_SUFFIX.keys():  # the partitions: root, verity, a Pi's boot
        custom = chosen[kind].custom["paladin"]
        need = custom.get("slot_length", custom["raw_length"])  # the zeros after its bytes too
        if need > box.room.get(kind, 0):
            raise UpdateError(f"release {version}'s {kind} image ({need} bytes) is larger than the slot "
                              f"({box.room.get(kind, 0)} bytes)")
    return version, chosen


def check_uki(uki: Path, version: str, box: Box) -> None:
    if (uki_arch := pe_arch(uki)) != box.arch:
        raise UpdateError(f"release {version}'s UKI is built for {uki_arch or 'no known architecture'}, "
                          f"this box is {box.arch}")
