"""The offline form of a release (a bundle), as the box opens it; the names are in appliance.facts.

A release of version V for an architecture A is three TUF targets:

    A/paladin_V_<uuid>.root.raw.gz     the root slot (erofs), gzip-compressed
    A/paladin_V_<uuid>.verity.raw.gz   its dm-verity hash tree
    A/paladin_V.efi                     the UKI, whose command line carries the root hash

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


class BundleError(ValueError):
    """An uploaded file is not a usable bundle; the message says why."""


def open_bundle(bundle: BinaryIO, dest: Path) -> dict:
    """Unpack the open file `bundle` into the empty directory `dest`, refusing anything but plain files
    in metadata/ and targets/; returns the bundle's marker."""
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
        tar.extractall(dest, filter="data")
    return marker
