"""The recovery key: an age X25519 identity the box makes, shows its owner once as a recovery kit, and
encrypts every backup to.

The box keeps the identity (device/recovery-key, 0600) to check each backup it writes; a restore on a
freshly flashed box needs the owner's copy.  Until the owner has typed back a part of it the key is only
proposed (device/recovery-key.proposed) and no backup is made: a key its owner never saw would make
backups nobody can restore.  The fingerprint (8 symbols of the recipient's SHA-256, e.g. K7QM-3XPA) is
written outside the ciphertext, in each backup's file name, so a restore can say which kit it needs.
Keys are made and read by Debian's age-keygen: no cryptography here.

An owner who would rather remember a passphrase than keep a kit may also seal a copy of the key with one
(`seal`): a standard age file encrypted with age's scrypt passphrase recipient (work factor 2^18, age's
own), which the box keeps beside its backups as recovery-key-XXXX-XXXX.age.  That file and the passphrase
open the backups anywhere (`age -d -i recovery-key-XXXX-XXXX.age BACKUP.age` asks for the passphrase), and
it is safe to store with them.  Backups themselves stay encrypted to the key alone: age lets a passphrase be
a file's only recipient, and the box must not keep a passphrase to make its daily backups.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .. import command, files
from ..layout import DeviceDir

PREFIX = "AGE-SECRET-KEY-1"
KEY = re.compile(PREFIX + r"[02-9AC-HJ-NP-Z]{58}")  # Bech32's alphabet, in capitals
GROUP = 6  # the key after its prefix is shown in groups of this many symbols; the owner types one back
AGE = "age"  # Debian's age (the reference implementation, in Go)
ARMOR = "-----BEGIN AGE ENCRYPTED FILE-----"
MIN_PASSPHRASE, MAX_PASSPHRASE = 12, 200
MAX_SEALED = 2048  # a sealed key is about 400 characters
SEAL_SECONDS = 60  # scrypt at 2^18 takes about a second on the build host, several on a small board


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


def passphrase(typed: str) -> str:
    """A passphrase to seal the key with, checked: long enough to stand up to guessing at scrypt's cost."""
    if not MIN_PASSPHRASE <= len(typed) <= MAX_PASSPHRASE or "\n" in typed or "\r" in typed:
        raise BadKey(f"a passphrase has {MIN_PASSPHRASE} to {MAX_PASSPHRASE} characters on one line (a few words "
                     "nobody would guess)")
    if len(set(typed)) < 5:
        raise BadKey("that passphrase repeats too few characters to be hard to guess; use a few unrelated words")
    return typed


def seal(key: str, typed: str) -> str:
    """`key` encrypted with a passphrase (age -p, armoured text): a file that is safe beside the backups."""
    given = command.holding(key.encode() + b"\n")
    try:
        return command.answered([AGE, "--passphrase", "--armor", f"/dev/fd/{given}"], [passphrase(typed)] * 2,
                                pass_fds=(given,), timeout=SEAL_SECONDS)
    finally:
        os.close(given)


def unseal(sealed: str, typed: str) -> str:
    """The recovery key in a file `seal` made, opened with the passphrase typed, or BadKey saying why not."""
    sealed = sealed.strip()
    if not sealed.startswith(ARMOR) or len(sealed) > MAX_SEALED:
        raise BadKey("that is not a sealed recovery key (the file recovery-key-XXXX-XXXX.age beside the backups)")
    if not typed or len(typed) > MAX_PASSPHRASE or "\n" in typed:
        raise BadKey("type the passphrase the recovery key was sealed with")
    given = command.holding(sealed.encode() + b"\n")
    try:
        opened = command.answered([AGE, "--decrypt", f"/dev/fd/{given}"], [typed], pass_fds=(given,),
                                  timeout=SEAL_SECONDS)
    except command.CommandError as err:
        if "incorrect passphrase" in str(err):
            raise BadKey("that passphrase does not open this sealed recovery key: check it and type it again") from None
        raise BadKey(f"that sealed recovery key cannot be opened ({str(err)[:120]})") from None
    finally:
        os.close(given)
    return identity(opened)


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
