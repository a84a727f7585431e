"""The release side, on the build host: signing keys and the TUF update repository (python-tuf).

Four roles, one ed25519 key each, threshold 1:
    root       signs which keys hold the other roles; offline, used only to rotate keys
    targets    signs the list of targets (each release's files, hashes, lengths, custom fields)
    snapshot   signs the versions of all targets metadata (no mix-and-match of old and new)
    timestamp  signs the current snapshot, short-lived, so a frozen mirror is noticed

Keys live in one directory outside the repository (`<role>.key`, PEM, 0600) beside the root metadata
history (`N.root.json`, `root.json` the newest).  The image trusts `root.json` as of its build.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp)
from tuf.api.serialization.json import JSONSerializer

from appliance import facts, files
from appliance.update.bundle import BUNDLE_FORMAT, BUNDLE_MARKER

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365, "targets": 365, "snapshot": 30, "timestamp": 14}
# gzip: systemd-sysupdate's systemd-import decompresses gzip, xz and bzip2 (not zstd), and gzip is the one
# a small box inflates at disk speed.
COMPRESSION_LEVEL = 6
BLOCK = 4096  # dm-verity's data block: a trimmed slot image ends on one


class ReleaseError(RuntimeError):
    pass


def _expiry(role: str, days: dict[str, float] | None = None) -> datetime:
    span = (days or {}).get(role, EXPIRY_DAYS[role])
    return (datetime.now(timezone.utc) + timedelta(days=span)).replace(microsecond=0)


def _write(md: Metadata, path: Path) -> None:
    files.write(path, md.to_bytes(JSONSerializer(compact=False)))


def signer(keys: Path, role: str) -> CryptoSigner:
    path = keys / f"{role}.key"
    if not path.exists():
        raise ReleaseError(f"no {role} key in {keys} (run build.py keys init)")
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return CryptoSigner(private)


def _new_key(keys: Path, role: str) -> CryptoSigner:
    new = CryptoSigner.generate_ed25519()
    files.write(keys / f"{role}.key", new.private_bytes, mode=0o600)
    return new


def _save_root(keys: Path, root: Metadata) -> None:
    for name in (f"{root.signed.version}.root.json", "root.json"):
        _write(root, keys / name)


def keys_init(keys: Path) -> None:
    if (keys / "root.json").exists():
        raise ReleaseError(f"{keys} already holds keys; rotate them with build.py keys rotate")
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = Metadata(Root(expires=_expiry("root"), consistent_snapshot=True))
    for role in ROLES:
        root.signed.add_key(_new_key(keys, role).public_key, role)
    root.sign(signer(keys, "root"))
    _save_root(keys, root)
    print(f"signing keys and root metadata written to {keys}; keep root.key offline")


def keys_rotate(keys: Path, role: str) -> None:
    """A new key for `role`; the new root metadata is signed by the old root key (and the new one, if
    the root key itself is replaced), so boxes that trust the old root follow the chain."""
    old_root_signer = signer(keys, "root")
    root = Metadata[Root].from_file(str(keys / "root.json"))
    for keyid in list(root.signed.roles[role].keyids):
        root.signed.revoke_key(keyid, role)
    new = _new_key(keys, role)
    root.signed.add_key(new.public_key, role)
    root.signed.version += 1
    root.signed.expires = _expiry("root")
    root.sign(old_root_signer, append=True)
    if role == "root":
        root.sign(new, append=True)
    _save_root(keys, root)
    print(f"{role} key replaced; root metadata is now version {root.signed.version}. "
          "Publish with build.py release --refresh, then build new images.")


FLAVOURS = {facts.flavour(arch, board): (arch, board) for board, arches in facts.BOARDS.items() for arch in arches}


def _split_artifacts(image: Path) -> tuple[str, str, dict[str, Path]]:
    """Version, flavour (facts.flavour) and the root, verity and boot side's files (a UKI, or a Raspberry
    Pi's boot partition: buildhost/rpi.py) written beside `image`."""
    match = re.fullmatch(rf"{facts.IMAGE_ID}_({facts.VERSION.pattern})_([a-z0-9-]+)\.raw", image.name)
    if not match or match.group(3) not in FLAVOURS:
        raise ReleaseError(f"{image.name} is not an image built by build.py "
                           f"({facts.image_name('VERSION', 'ARCH')}.raw)")
    version, flavour = match.group(1), match.group(3)
    arch, board = FLAVOURS[flavour]
    stem = facts.image_name(version, flavour)  # not with_suffix: versions have dots
    found = {"root": sorted(image.parent.glob(f"{stem}.root-{arch}.*.raw")),
             "verity": sorted(image.parent.glob(f"{stem}.root-{arch}-verity.*.raw")),
             "uki": [p for p in [image.parent / f"{stem}.efi"] if p.exists()],
             "boot": sorted(image.parent.glob(f"{stem}.boot.*.raw"))}
    found = {kind: found[kind] for kind in facts.release_kinds(board)}
    for kind, paths in found.items():
        if len(paths) != 1:
            raise ReleaseError(f"expected one {kind} artifact beside {image.name}, found {len(paths)}")
    return version, flavour, {kind: paths[0] for kind, paths in found.items()}


def _content(path: Path, trim: bool) -> tuple[int, str]:
    """The length of `path`, `trim`med to its last block that is not all zeros, and those bytes' SHA-256.  A
    slot image is its file system and then zeros to the slot's size (the root's erofs fills a third of its
    1280 MiB): a release carries only the first part, and the box writes zeros after it (slots.check_slot)."""
    digest, at, end = hashlib.sha256(), 0, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if stripped := chunk.rstrip(b"\0") if trim else chunk:
                end = at + len(stripped)
            at += len(chunk)
        end = min(-(-end // BLOCK) * BLOCK, at)
        f.seek(0)
        for chunk in _chunks(f, end):
            digest.update(chunk)
    return end, digest.hexdigest()


def _chunks(f, length: int):
    """The first `length` bytes of `f`, a MiB at a time."""
    while length and (chunk := f.read(min(length, 1 << 20))):
        yield chunk
        length -= len(chunk)


def write_bundle(out: Path, marker: dict, members: dict[str, Path]) -> None:
    """`files` maps names inside the bundle (metadata/..., targets/...) to files on disk."""
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(marker | {"format": BUNDLE_FORMAT}).encode()
        info = tarfile.TarInfo(BUNDLE_MARKER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, path in sorted(members.items()):
            tar.add(path, arcname=name, recursive=False)
    partial.replace(out)



class Repository:
    """A TUF repository directory (metadata/ and targets/, consistent snapshots), as served."""

    def __init__(self, path: Path, keys: Path):
        self.path, self.keys = path, keys
        self.metadata = path / "metadata"
        self.targets_dir = path / "targets"

    def _current(self, role: str):
        if role == "timestamp":
            path = self.metadata / "timestamp.json"
        else:
            snapshot_version = self._current("timestamp").signed.snapshot_meta.version
            if role == "snapshot":
                path = self.metadata / f"{snapshot_version}.snapshot.json"
            else:
                meta = Metadata.from_file(str(self.metadata / f"{snapshot_version}.snapshot.json"))
                path = self.metadata / f"{meta.signed.meta['targets.json'].version}.targets.json"
        return Metadata.from_file(str(path))

    def targets(self) -> Metadata:
        if not (self.metadata / "timestamp.json").exists():
            return Metadata(Targets(expires=_expiry("targets")))
        targets = self._current("targets")
        targets.signed.version += 1
        return targets

    def publish(self, targets: Metadata | None = None, expiry_days: dict[str, float] | None = None) -> None:
        """Sign `targets` (or keep the current ones), then a new snapshot and timestamp; copy the root chain."""
        self.metadata.mkdir(parents=True, exist_ok=True)
        for root in self.keys.glob("*.root.json"):
            if root.name[0].isdigit():
                files.write(self.metadata / root.name, root.read_bytes())
        if targets is not None:
            targets.signed.expires = _expiry("targets", expiry_days)
            targets.signatures.clear()
            targets.sign(signer(self.keys, "targets"))
            _write(targets, self.metadata / f"{targets.signed.version}.targets.json")
        else:
            targets = self._current("targets")
        if (self.metadata / "timestamp.json").exists():
            snapshot = self._current("snapshot")
            snapshot.signed.version += 1
        else:
            snapshot = Metadata(Snapshot())
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        snapshot.signed.expires = _expiry("snapshot", expiry_days)
        snapshot.signatures.clear()
        snapshot.sign(signer(self.keys, "snapshot"))
        _write(snapshot, self.metadata / f"{snapshot.signed.version}.snapshot.json")
        if (self.metadata / "timestamp.json").exists():
            timestamp = self._current("timestamp")
            timestamp.signed.version += 1
        else:
            timestamp = Metadata(Timestamp())
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.expires = _expiry("timestamp", expiry_days)
        timestamp.signatures.clear()
        timestamp.sign(signer(self.keys, "timestamp"))
        _write(timestamp, self.metadata / "timestamp.json")

    def add_target(self, targets: Metadata, name: str, path: Path, custom: dict) -> None:
        info = TargetFile.from_file(name, str(path), ["sha256"])
        info.unrecognized_fields["custom"] = {"paladin": custom}
        stored = self.targets_dir / name
        stored = stored.with_name(f"{info.hashes['sha256']}.{stored.name}")
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, stored)
        targets.signed.targets[name] = info

    def release(self, image: Path, expiry_days: dict[str, float] | None = None) -> Path:
        """Add the release built as `image` and publish; returns the release's offline bundle."""
        version, flavour, artifacts = _split_artifacts(image)
        targets = self.targets()
        work = self.path / ".incoming"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for kind, source in artifacts.items():
            uuid = "" if kind == "uki" else source.name.split(".")[-2]
            name = facts.target_name(flavour, kind, version, uuid)
            length, digest = _content(source, trim=kind != "uki")
            custom = {"version": version, "arch": flavour, "kind": kind, "raw_length": length, "raw_sha256": digest}
            staged = work / Path(name).name
            if kind == "uki":
                shutil.copy(source, staged)
            else:
                custom["slot_length"] = source.stat().st_size  # what its dm-verity data (or FAT) spans
                with source.open("rb") as raw, gzip.open(staged, "wb", compresslevel=COMPRESSION_LEVEL) as packed:
                    packed.writelines(_chunks(raw, length))
            self.add_target(targets, name, staged, custom)
        work.rmdir()
        self.publish(targets, expiry_days)
        return self.bundle(version, flavour)

    def bundle(self, version: str, flavour: str) -> Path:
        """One file with the metadata and this release's targets, for a USB stick or the web UI."""
        targets = self._current("targets")
        snapshot_version = self._current("timestamp").signed.snapshot_meta.version
        members = {f"metadata/{p.name}": p for p in self.metadata.glob("*.root.json")}
        members["metadata/timestamp.json"] = self.metadata / "timestamp.json"
        members[f"metadata/{snapshot_version}.snapshot.json"] = self.metadata / f"{snapshot_version}.snapshot.json"
        members[f"metadata/{targets.signed.version}.targets.json"] = (
            self.metadata / f"{targets.signed.version}.targets.json")
        for name, info in targets.signed.targets.items():
            custom = info.custom.get("paladin", {})
            if custom.get("version") == version and custom.get("arch") == flavour:
                stored = f"{Path(name).parent}/{info.hashes['sha256']}.{Path(name).name}"
                members[f"targets/{stored}"] = self.targets_dir / stored
        out = self.path / "bundles" / f"{facts.image_name(version, flavour)}.bundle"
        out.parent.mkdir(exist_ok=True)
        write_bundle(out, {"version": version, "arch": flavour}, members)
        return out


def main(argv: list[str] | None = None) -> None:
    top = argparse.ArgumentParser(prog="python -m buildhost.release", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("action", choices=["keys-init", "keys-rotate", "add", "refresh"])
    top.add_argument("--keys", type=Path, required=True)
    top.add_argument("--role", choices=ROLES)
    top.add_argument("--repo", type=Path)
    top.add_argument("--image", type=Path)
    args = top.parse_args(argv)
    try:
        if args.action == "keys-init":
            keys_init(args.keys)
        elif args.action == "keys-rotate":
            if not args.role:
                raise ReleaseError("keys-rotate needs --role")
            keys_rotate(args.keys, args.role)
        elif args.repo is None:
            raise ReleaseError(f"{args.action} needs --repo")
        elif args.action == "add":
            bundle = Repository(args.repo, args.keys).release(args.image)
            print(json.dumps({"repo": str(args.repo), "bundle": str(bundle)}))
        else:
            Repository(args.repo, args.keys).publish()
    except (ReleaseError, OSError) as err:
        raise SystemExit(f"build.py release: {err}")


if __name__ == "__main__":
    main()
