"""The recovery key: an age X25519 identity the box makes, shows its owner once as a recovery kit, and
encrypts every backup to.

The box keeps the identity (device/recovery-key, 0600) to check each backup it writes; a restore on a
freshly flashed box needs the owner's copy.  Until the owner has typed back a part of it the key is only
proposed (device/recovery-key.proposed) and no backup is made: a key its owner never saw would make
backups nobody can restore.  The fingerprint (8 symbols of the recipient's SHA-256, e.g. K7QM-3XPA) is
written outside the ciphertext, in each backup's file name, so a restore can say which kit it needs.
Keys are made and read by Debian's age-keygen: no cryptography here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .. import command, files
from ..layout import DeviceDir

PREFIX = "AGE-SECRET-KEY-1"
KEY = re.compile(PREFIX + r"[02-9AC-HJ-NP-Z]{58}")  # Bech32's alphabet, in capitals
GROUP = 6  # the key after its prefix is shown in groups of this many symbols; the owner types one back


class BadKey(ValueError):
    """What a person typed is not a recovery key, or not this one; the message says which."""


def normalise(typed: str) -> str:
    """A key as typed or pasted: spaces, line breaks and dashes inside it do not matter, nor does case."""
    squeezed = "".join(typed.split()).upper()
    return PREFIX + squeezed.removeprefix(PREFIX).replace("-", "")


def generate() -> str:
    made = command.run(["age-keygen"], timeout=30)
    return next(line for line in made.splitlines() if line.startswith(PREFIX))


@functools.lru_cache(maxsize=8)  # the pages ask for the box's key's fingerprint on every visit
def recipient(key: str) -> str:
    """The public half of `key` (age1...), which backups are encrypted to."""
    return command.run(["age-keygen", "-y"], stdin=key + "\n", timeout=30).strip()


def identity(typed: str) -> str:
    """The recovery key a person typed or pasted, checked (its Bech32 checksum too), or BadKey."""
    key = normalise(typed)
    try:
        if KEY.fullmatch(key):
            recipient(key)
            return key
    except command.CommandError:
        pass
    raise BadKey("that is not a recovery key: it starts with AGE-SECRET-KEY-1 and has 58 more letters and digits "
                 "(check for a missing or mistyped group)")


def fingerprint(public: str) -> str:
    """The short name of a key (from its recipient), as backups' file names and the recovery kit show it."""
    digest = base64.b32encode(hashlib.sha256(public.encode()).digest()).decode()
    return f"{digest[:4]}-{digest[4:8]}"


def fingerprint_of(key: str) -> str:
    return fingerprint(recipient(key))


def groups(key: str) -> list[str]:
    """The key's body in groups, as the kit shows it (the prefix apart)."""
    body = key[len(PREFIX):]
    return [body[i:i + GROUP] for i in range(0, len(body), GROUP)]


@dataclass(frozen=True)
class Keys:
    """The box's recovery key, and the one proposed to its owner before it is confirmed."""
    device: DeviceDir

    def current(self) -> str | None:
        return self._read(self.device.recovery_key)

    def proposed(self) -> str:
        """The key the recovery kit shows until the owner confirms it (made on first asking)."""
        found = self._read(self.device.recovery_key_proposed)
        if found is None:
            found = generate()
            files.write(self.device.recovery_key_proposed, found.encode(), mode=0o600)
        return found

    def confirm(self, group: int, typed: str) -> str:
        """Make the proposed key the box's once the owner typed its `group` back correctly."""
        proposed = self.proposed()
        wanted = groups(proposed)
        if not 0 <= group < len(wanted):
            raise BadKey(f"there is no group {group + 1} in the key")
        if not secrets.compare_digest(normalise(typed).removeprefix(PREFIX), wanted[group]):
            raise BadKey(f"that is not group {group + 1} of the key: copy the key from the kit before going on")
        self.adopt(proposed)
        return proposed

    def adopt(self, key: str) -> None:
        """`key` becomes the box's recovery key (a restore brings the key its owner typed)."""
        files.write(self.device.recovery_key, key.encode(), mode=0o600)
        self.device.recovery_key_proposed.unlink(missing_ok=True)

    def renew(self) -> str:
        """Start over with a new proposed key (the current one stays until the new one is confirmed)."""
        self.device.recovery_key_proposed.unlink(missing_ok=True)
        return self.proposed()

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None
