"""The offline form of a release (a bundle), as the box opens it; the names are in appliance.facts.

A release of version V for an architecture A (facts.flavour: x86-64, arm64, arm64-rpi) is three TUF targets:

    A/paladin_V_<uuid>.root.raw.gz     the root slot (erofs), gzip-compressed
    A/paladin_V_<uuid>.verity.raw.gz   its dm-verity hash tree
    A/paladin_V.efi                     the UKI, whose command line carries the root hash
    (a Raspberry Pi's: A/paladin_V_<uuid>.boot.raw.gz, its boot partition, instead of the UKI)

The UUIDs are the GPT partition UUIDs the slot must get: halves of the root hash, which is how the UKI
finds its slot.  Each target's signed custom field `paladin` says its version, architecture, kind and
the length and SHA-256 of the uncompressed bytes, so the box can check a slot after writing it.

A bundle is one uncompressed tar holding the repository subset for one release: `paladin-bundle.json`,
`metadata/` (the root chain, timestamp, snapshot and targets) and `targets/` (that release's files).
It is untrusted input: the box verifies it with the same TUF client as an online update.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

BUNDLE_MARKER = "paladin-bundle.json"
BUNDLE_FORMAT = 1
# Far above any real release (three targets and their metadata); a bound keeps a hostile file small.
BUNDLE_MAX_MEMBERS = 256
BLOCK = 512
EXTENDED_HEADERS = (b"x", b"g", b"L", b"K")  # pax and GNU long-name records
EXTENDED_MAX_BYTES = 64 * 1024  # our names are short; a real record is a few hundred bytes


class BundleError(ValueError):
    """An uploaded file is not a usable bundle; the message says why."""


def _walk_headers(bundle: BinaryIO) -> None:
    """Read the raw tar headers before tarfile does: tarfile would read a pax or GNU long-name record
    into memory whole, as root, whatever size its header claims; here no record is read at all, and
    the count and sizes are bounded first."""
    end = bundle.seek(0, 2)
    bundle.seek(0)
    for _ in range(2 * BUNDLE_MAX_MEMBERS + 1):  # a member may bring one extended header
        header = bundle.read(BLOCK)
        if header == bytes(BLOCK):
            bundle.seek(0)
            return
        if len(header) < BLOCK:
            raise BundleError("not a PAL-adin update bundle (a truncated tar archive)")
        field = header[124:136]
        try:  # octal, or base-256 (GNU) for members of 8 GiB and more
            size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise BundleError("not a PAL-adin update bundle (a damaged tar header)") from None
        if header[156:157] in EXTENDED_HEADERS and size > EXTENDED_MAX_BYTES:
            raise BundleError(f"not a PAL-adin update bundle (a {size}-byte extended tar header)")
        skip = -(-size // BLOCK) * BLOCK
        if skip > end - bundle.tell():  # also a size no seek could take (seen: a random base-256 field)
            raise BundleError("not a PAL-adin update bundle (a truncated tar archive)")
        bundle.seek(skip, 1)
    raise BundleError(f"not a PAL-adin update bundle (more than {BUNDLE_MAX_MEMBERS} files)")


def unpacked_size(bundle: BinaryIO) -> int:
    """What unpacking `bundle` writes, at most: its own size (a tar stores members uncompressed)."""
    return bundle.seek(0, 2)


def open_bundle(bundle: BinaryIO, dest: Path) -> dict:
    """Unpack the open file `bundle` into the empty directory `dest`, refusing anything but plain files
    in metadata/ and targets/; returns the bundle's marker."""
    _walk_headers(bundle)
    try:
        tar = tarfile.open(fileobj=bundle, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"not a PAL-adin update bundle (not a tar archive: {err})") from None
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as err:
            raise BundleError(f"not a PAL-adin update bundle (damaged tar: {err})") from None
        if len(members) > BUNDLE_MAX_MEMBERS:
            raise BundleError(f"not a PAL-adin update bundle ({len(members)} files)")
        names = {m.name for m in members}
        if BUNDLE_MARKER not in names:
            raise BundleError(f"not a PAL-adin update bundle (no {BUNDLE_MARKER})")
        for member in members:
            name = member.name
            if not member.isfile() or (name != BUNDLE_MARKER and not re.fullmatch(
                    r"(metadata/[0-9a-z.]+\.json|targets/[a-z0-9-]+/[0-9a-f]{64}\.paladin_[0-9a-z._-]+)", name)):
                raise BundleError(f"not a PAL-adin update bundle (unexpected member {name!r})")
        try:
            marker = json.loads(tar.extractfile(BUNDLE_MARKER).read(65536))
        except (ValueError, AttributeError):
            raise BundleError(f"not a PAL-adin update bundle ({BUNDLE_MARKER} is not JSON)") from None
        if not isinstance(marker, dict) or marker.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"unsupported bundle format {marker.get('format') if isinstance(marker, dict) else marker!r}")
        try:
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, OverflowError) as err:  # a damaged header: a size, a name, a time out of range
            raise BundleError(f"not a PAL-adin update bundle (damaged member: {err})") from None
    return marker
