"""The model store on the data partition: the installed models, and verified downloads and imports.

Nothing half-written ever sits where a model is expected: bytes go to `models/.partial/NAME.part` (kept
across interruptions and reboots so downloads resume), are hashed as they arrive, checked against the
pinned size and SHA-256, and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from . import catalog, files
from .catalog import Catalog, Tier
from .config import Config

CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class StoreError(RuntimeError):
    """A model could not be downloaded, imported or found; the message says why and what to do."""


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
        ladder = catalog.of(config)
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
    """Copy chunks from `read` to `out` until `total` bytes are done, hashing and reporting as they pass;
    return the bytes done (fewer when `read` ends first)."""
    while done < total and (chunk := read(min(CHUNK, total - done))):
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


class Cancelled(StoreError):
    """The owner stopped the download; what arrived is kept for the next attempt."""


# A connection that brings nothing for this long is dropped and made again; this many attempts in a row
# that bring no byte further than the best one before end the download (a server that is gone for good).
STALL_SECONDS = 30
ATTEMPTS = 5
RETRY_SECONDS = (1, 2, 5, 10, 30)


class _Dropped(Exception):
    """This attempt ended before the file did: the connection broke, stalled, or the server failed."""


def download(url: str, sha256: str, size: int, models: Path, name: str, progress: Progress | None = None, *,
             cancelled: threading.Event | None = None, stall_seconds: float = STALL_SECONDS) -> Path:
    """Fetch the `size` bytes at `url` into `models/name`, verified against `sha256` as they arrive.

    What an earlier attempt left in `.partial/` (a dropped connection, a reboot) is resumed with an HTTP
    Range request, and a dropped or stalled connection is made again by itself (ATTEMPTS in a row without
    progress end it).  A server that ignores the range is read from the start again; one that sends more
    than `size` is not read past it.  Free space for the rest is checked first.  `cancelled`, once set,
    stops it (Cancelled) with what arrived kept."""
    models.mkdir(parents=True, exist_ok=True)
    dest, part = models / name, _partial(models, name)
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not this file's beginning: another pin's, or damaged
        part.unlink()
        have = 0
    _ensure_space(models, size - have)
    digest = _sha256_of(part) if have else hashlib.sha256()
    best, failures = have, 0
    while have < size:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled(f"the download of {name} was stopped at {have} of {size} bytes; starting it again "
                            "resumes it")
        try:
            have, digest = _attempt(url, part, have, digest, size, progress, cancelled, stall_seconds)
        except _Dropped as err:
            have = part.stat().st_size if part.exists() else 0
            failures = 0 if have > best else failures + 1
            best = max(best, have)
            if failures >= ATTEMPTS:
                raise StoreError(f"download of {url} failed {ATTEMPTS} times in a row at {have} of {size} bytes "
                                 f"({err}); what arrived is kept: start it again to resume") from None
            pause = RETRY_SECONDS[failures]
            cancelled.wait(pause) if cancelled is not None else time.sleep(pause)
    return _commit(part, digest.hexdigest(), sha256, dest)


STOP_POLL_SECONDS = 0.5


@contextlib.contextmanager
def _cut_when(cancelled: threading.Event | None, response):
    """While the block runs, a stop shuts the connection down under a read the network holds up, so that a
    stalled download stops at once rather than after STALL_SECONDS."""
    if cancelled is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if cancelled.wait(STOP_POLL_SECONDS):
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(response.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)  # the connection itself, under the read: it ends with EOF
                return

    watcher = threading.Thread(target=watch, name="download-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _attempt(url: str, part: Path, have: int, digest, size: int, progress: Progress | None,
             cancelled: threading.Event | None, stall_seconds: float) -> tuple[int, "hashlib._Hash"]:
    """One request for the bytes from `have` on, written to `part`; the bytes done and the digest."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=stall_seconds)
    except urllib.error.HTTPError as err:
        if err.code >= 500 or err.code == 429:
            raise _Dropped(f"HTTP {err.code} {err.reason}") from None
        raise StoreError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        if have or isinstance(getattr(err, "reason", err), TimeoutError):
            raise _Dropped(str(err)) from None
        raise StoreError(f"download of {url} failed: {err}") from None
    with response, _cut_when(cancelled, response):
        if have and response.status != 206:  # the server ignored the range: it sends the file from its start
            have, digest = 0, hashlib.sha256()

        def read(n: int) -> bytes:
            if cancelled is not None and cancelled.is_set():
                return b""
            try:
                return response.read1(n)  # what has arrived, up to n: a stall keeps what came before it
            except (OSError, http.client.HTTPException) as err:  # a dropped, stalled or short connection
                raise _Dropped(str(err) or type(err).__name__) from None

        try:
            with part.open("r+b" if have else "wb") as f:
                f.seek(have)
                f.truncate()
                have = _pump(read, f, digest, have, size, progress)
        except OSError as err:
            if err.errno == errno.ENOSPC:  # something else filled the partition: give the database its room back
                part.unlink(missing_ok=True)
                raise StoreError(f"download of {url} stopped: the data partition is full; the partial file was "
                                 "deleted; free space and download again") from None
            raise
    if have < size and not (cancelled is not None and cancelled.is_set()):
        raise _Dropped(f"the server sent {have} of {size} bytes")
    return have, digest


def download_tier(tier: Tier, models: Path, progress: Progress | None = None,
                  cancelled: threading.Event | None = None) -> Path:
    return download(tier.url, tier.sha256, tier.size, models, tier.file, progress, cancelled=cancelled)


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
