"""`paladin-card` (root; paladin-card.service, at every boot before the first-boot unit): the setup code an
owner wrote on the box's PALADIN drive, taken off it.

The PALADIN drive is the small FAT partition a computer shows when the flashed USB stick or SD card is put
in it.  An owner without a screen writes a code of their choosing into `setup-code.txt` there
(docs/first-boot.md); this moves its first bytes to CARD_HANDED (the first-boot unit's group may read and
remove it) and deletes it from the drive, durably, so the code lies on no medium once the box has read it.
It judges nothing: the unprivileged first-boot unit does (appliance/firstboot.py).  Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import facts, files


def take(card: Path = Path(facts.CARD_MOUNT), handed: Path = Path(facts.CARD_HANDED)) -> str:
    """Move the drive's setup code to `handed`; what was done, for the journal."""
    source = card / facts.CARD_CODE
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return f"no {facts.CARD_CODE} on the {facts.CARD_LABEL} drive"
    with os.fdopen(fd, "rb") as f:
        text = f.read(facts.CARD_CODE_LIMIT + 1)  # longer is refused as such by the first-boot unit
    files.write(handed, text, mode=0o660)
    source.unlink()
    files.fsync_directory(card)  # the code must not come back after a power cut
    return f"took {facts.CARD_CODE} ({len(text)} bytes) off the {facts.CARD_LABEL} drive for the first-boot unit"


def main() -> None:
    try:
        print(take(), flush=True)
    except OSError as err:
        sys.exit(f"paladin-card: {err}")
