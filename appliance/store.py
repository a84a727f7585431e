"""The model store on the data partition: a catalog of tiers, verified downloads and imports.

Nothing half-written ever sits where a model is expected: bytes go to
`models/.partial/NAME.part` (kept across interruptions so downloads resume),
are checked against the pinned SHA-256, and only then renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from . import files
from .config import Config

SHIPPED = Path(__file__).with_name("catalog.yaml")
CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class StoreError(RuntimeError):
    """A model could not be downloaded, imported or found; the message says why and what to do."""


@dataclass(frozen=True)
class Tier:
    name: str
    file: str
    size: int
    ram: int
    url: str
    sha256: str


@dataclass(frozen=True)
class Catalog:
    """The model ladder, smallest first."""
    tiers: tuple[Tier, ...]

    @classmethod
    def read(cls, path: Path = SHIPPED) -> Catalog:
        return cls(tuple(Tier(**entry) for entry in yaml.safe_load(path.read_text())["tiers"]))

    def named(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    def with_file(self, file: str) -> Tier | None:
        """The tier whose file is named `file`: a copy of it from elsewhere must match its pin."""
        return next((t for t in self.tiers if t.file == file), None)

    def tier_of(self, path: str | Path | None) -> str | None:
        tier = self.with_file(Path(path).name) if path else None
        return tier.name if tier else None

    def names(self) -> str:
        """Its tiers' names, for messages that say what exists."""
        return ", ".join(t.name for t in self.tiers)


def catalog(config: Config) -> Catalog:
    """The catalog this box offers: `paths.catalog`, else the one shipped."""
    return Catalog.read(Path(config.paths.catalog) if config.paths.catalog else SHIPPED)


def installed(models: Path) -> dict[str, int]:
    """The GGUF files in the store, file name to size in bytes, by name: regular files only (a link could
    point anywhere; downloads in progress live in `.partial/`)."""
    if not models.is_dir():
        return {}
    entries = sorted(os.scandir(models), key=lambda entry: entry.name)
    return {e.name: e.stat(follow_symlinks=False).st_size for e in entries
            if e.name.endswith(".gguf") and not e.name.startswith(".") and e.is_file(follow_symlinks=False)}


def configured_model(config: Config) -> Path | None:
    """The model to serve: `inference.model` as a path, a file name in the store or a tier name, else the
    first GGUF in the store."""
    choice = config.inference.model
    if "/" in choice:
        return Path(choice)
    if choice.endswith(".gguf"):
        return config.data.models / choice
    if choice:
        ladder = catalog(config)
        tier = ladder.named(choice)
        if tier is None:
            raise StoreError(f"inference.model: {choice!r} is neither a path, a .gguf file name nor a catalog "
                             f"tier (tiers: {ladder.names()})")
        return config.data.models / tier.file
    present = installed(config.data.models)
    return config.data.models / next(iter(present)) if present else None


def remove(models: Path, name: str) -> None:
    """Delete the installed model `name` (a bare file name in the store), durably: it stays gone after a
    power cut.  FileNotFoundError when it is not there."""
    os.unlink(models / name)
    directory = os.open(models, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _partial(models: Path, name: str) -> Path:
    path = models / ".partial" / (name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sha256_of(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def _pump(read, out, digest, done: int, total: int, progress: Progress | None) -> int:
    """Copy chunks from `read` to `out`, hashing and reporting as they pass; return the bytes done.
    Past the announced `total` (a server that sent no or a wrong length) each chunk checks free space
    first: the partial file is then deleted rather than let eat into the database's reserve."""
    while chunk := read(CHUNK):
        if done + len(chunk) > total and (problem := files.shortfall(Path(out.name).parent, len(chunk))):
            out.close()
            Path(out.name).unlink()
            raise StoreError(f"{problem}; more arrived than announced, and the partial file was deleted")
        out.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)
    return done


def _commit(part: Path, digest: str, expected: str | None, dest: Path) -> Path:
    if expected is not None and digest != expected:
        part.unlink()
        raise StoreError(f"{dest.name}: SHA-256 mismatch (expected {expected}, got {digest}); "
                         "the corrupt copy was deleted, nothing was installed")
    return files.commit(part, dest)


def _ensure_space(directory: Path, needed: int) -> None:
    if problem := files.shortfall(directory, needed):
        raise StoreError(problem)


def download(url: str, sha256: str, models: Path, name: str, progress: Progress | None = None,
             size: int | None = None) -> Path:
    """Fetch `url` into `models/name`, resuming a previous partial download, verifying `sha256`."""
    models.mkdir(parents=True, exist_ok=True)
    dest, part = models / name, _partial(models, name)
    have = part.stat().st_size if part.exists() else 0
    digest = _sha256_of(part) if have else hashlib.sha256()
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already complete
            return _commit(part, digest.hexdigest(), sha256, dest)
        raise StoreError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise StoreError(f"download of {url} failed: {err}") from None
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have, digest = 0, hashlib.sha256()
        remaining = int(response.headers.get("Content-Length") or (size or 0) - have)
        total = have + remaining
        _ensure_space(models, remaining)
        try:
            with part.open("ab" if have else "wb") as f:
                have = _pump(response.read, f, digest, have, total, progress)
        except OSError as err:
            if err.errno == errno.ENOSPC:  # something else filled the partition: give the database its room back
                part.unlink(missing_ok=True)
                raise StoreError(f"download of {url} stopped: the data partition is full; the partial file was "
                                 "deleted; free space and download again") from None
            raise StoreError(f"download of {url} interrupted at {part.stat().st_size} of {total} bytes ({err}); "
                             "run it again to resume") from None
    if have < total:
        raise StoreError(f"download of {url} ended early at {have} of {total} bytes; run it again to resume")
    return _commit(part, digest.hexdigest(), sha256, dest)


def download_tier(tier: Tier, models: Path, progress: Progress | None = None) -> Path:
    return download(tier.url, tier.sha256, models, tier.file, progress, tier.size)


def import_file(source: Path, models: Path, ladder: Catalog, progress: Progress | None = None) -> Path:
    """Copy a GGUF from a local path (a USB stick); a file the catalog knows must match its pin."""
    if not source.is_file():
        raise StoreError(f"{source}: no such file")
    with source.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise StoreError(f"{source}: not a GGUF model file")
    models.mkdir(parents=True, exist_ok=True)
    pinned = ladder.with_file(source.name)
    expected = pinned.sha256 if pinned else None
    total = source.stat().st_size
    _ensure_space(models, total)
    part, digest = _partial(models, source.name), hashlib.sha256()
    with source.open("rb") as src, part.open("wb") as dst:
        _pump(src.read, dst, digest, 0, total, progress)
    return _commit(part, digest.hexdigest(), expected, models / source.name)
