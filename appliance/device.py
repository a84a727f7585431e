"""The device's own secrets, made on its first boot and never in an image: the TLS key and certificate,
the session signing key and the one-time setup code.

Each file is written whole or not at all (`files.write`), and only when it is missing, so `ensure` can be
interrupted anywhere and run again: two boxes flashed from one image, or two first boots of one image,
share nothing.  The key is written before the certificate that names it, so a certificate never outlives
its key.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import facts, files
from .layout import DataDir, DeviceDir

# No letters or digits that read alike on a screen (0/O, 1/I/L, 2/Z, 5/S, 8/B): 12 symbols of these 24
# give 55 bits, far beyond what the wizard's attempt limit lets anyone guess.
CODE_ALPHABET = "3467ACDEFGHJKMNPQRTUVWXY"
CODE_GROUPS, CODE_GROUP_LENGTH = 3, 4
MIN_CHOSEN, MIN_DIFFERENT = 12, 5  # a code the owner chose (on the PALADIN drive): `weakness`


@dataclass(frozen=True)
class Secrets(DeviceDir):
    """The device's secrets (where each is: layout.DeviceDir), and what the service reads of them."""

    def session_key(self) -> bytes:
        return self.session_key_file.read_bytes()

    def setup_code(self) -> str | None:
        """The code that opens the setup wizard, or None once setup is finished."""
        try:
            return self.setup_code_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def refused_code(self) -> str | None:
        """Why the code written on the PALADIN drive was not used (for the wizard's first page), or None."""
        try:
            return self.refused_code_file.read_text() or None
        except FileNotFoundError:
            return None

    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint as browsers show it (AB:CD:...)."""
        from . import certificate  # cryptography where it is needed (see _make_tls)

        return certificate.fingerprint(self.tls_certificate.read_bytes())


def secrets_of(data_dir: Path) -> Secrets:
    return Secrets(DataDir(Path(data_dir)).device.root)


def new_setup_code() -> str:
    groups = ("".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LENGTH)) for _ in range(CODE_GROUPS))
    return "-".join(groups)


def normalise_code(typed: str) -> str:
    """What a person typed, as the code is stored: case, spaces and dashes do not matter."""
    letters = "".join(c for c in typed.upper() if c.isalnum())[:CODE_GROUPS * CODE_GROUP_LENGTH * 2]
    return "-".join(letters[i:i + CODE_GROUP_LENGTH] for i in range(0, len(letters), CODE_GROUP_LENGTH))


def addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The box's addresses on its networks (not loopback), IPv4 first."""
    found = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = ipaddress.ip_address(entry.address.split("%")[0])
                if not address.is_loopback:
                    found.add(address)
    return sorted(found, key=lambda a: (a.version, a.is_link_local, int(a)))


def ensure(data_dir: Path, hostname: str | None = None) -> Secrets:
    """Make whatever of the device's secrets is missing; never replace one that exists."""
    made = secrets_of(data_dir)
    made.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (made.tls_key.exists() and made.tls_certificate.exists()):
        _make_tls(made, hostname)
    if not made.session_key_file.exists():
        files.write(made.session_key_file, secrets.token_bytes(32), mode=0o600)
    return made


def _make_tls(made: Secrets, hostname: str | None) -> None:
    # cryptography only where a key or certificate is made: `paladin serve` checks the secrets in gunicorn's
    # arbiter, which must not carry its 14 MB for nothing.
    from . import certificate

    if not made.tls_key.exists():
        made.tls_certificate.unlink(missing_ok=True)  # one left from an earlier key would not match
        files.write(made.tls_key, certificate.new_key(), mode=0o600)
    if not made.tls_certificate.exists():
        host = (hostname or socket.gethostname()).split(".")[0]
        names = sorted({facts.MDNS_NAME, f"{host}.local", host, "localhost"})
        ips = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), *addresses()]
        files.write(made.tls_certificate, certificate.self_signed(made.tls_key.read_bytes(), names, ips),
                    mode=0o644)


def new_code(made: Secrets, chosen: str | None = None) -> str:
    """A new setup code: made here, or the owner's `chosen` one (it must pass `weakness`)."""
    code = normalise_code(chosen) if chosen is not None else new_setup_code()
    files.write(made.setup_code_file, code.encode(), mode=0o600)
    return code


def weakness(chosen: str) -> str | None:
    """What makes a code an owner chose too weak to open the wizard, or None.  The wizard's attempt limit
    leaves a guesser a handful of tries; 12 letters and digits, not mostly one, are far beyond them."""
    if len(chosen.encode()) > facts.CARD_CODE_LIMIT:
        return f"it is longer than {facts.CARD_CODE_LIMIT} bytes: a code is a few words"
    letters = [c for c in chosen.upper() if c.isalnum()]
    if len(letters) < MIN_CHOSEN:
        return f"it has {len(letters)} letters and digits; at least {MIN_CHOSEN} are needed"
    if len(set(letters)) < MIN_DIFFERENT:
        return f"it uses only {len(set(letters))} different letters and digits; at least {MIN_DIFFERENT} are needed"
    return None


def forget_code(made: Secrets) -> None:
    made.setup_code_file.unlink(missing_ok=True)
    made.refused_code_file.unlink(missing_ok=True)
