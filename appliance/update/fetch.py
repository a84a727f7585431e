"""Fetching a release: python-tuf decides what is trusted.

It refreshes the metadata (signatures, thresholds, versions, expiry: no forged, frozen or replayed
repository gets through) and downloads each target into the staging directory, checking length and
hash before keeping a byte.  On top of that this module refuses a release for another architecture,
an older version than the running one, and a root larger than a slot.

Sources: an HTTP(S) repository URL, a local repository directory (a USB stick), or a bundle (an open
file).  Nothing but the updater's state directory is written.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from .. import facts, files
from . import bundle
from .progress import Progress, UpdateError
from .slots import pe_arch

TRUSTED_ROOT = Path(facts.TRUSTED_ROOT)
Source = str | BinaryIO  # a URL or a repository directory, or an open bundle file


# A mirror must keep up this average once a transfer is GRACE_SECONDS old (curl's --speed-limit):
# the socket timeout alone lets a server that sends a byte every few seconds stall the box forever.
MIN_BYTES_PER_SECOND = 4096
GRACE_SECONDS = 30


class CountingFetcher(Urllib3Fetcher):
    def __init__(self, progress: Progress):
        super().__init__(socket_timeout=30, app_user_agent="paladin-update")
        self.progress = progress

    def _fetch(self, url: str) -> Iterator[bytes]:
        started, received = time.monotonic(), 0
        for chunk in super()._fetch(url):
            received += len(chunk)
            self.progress.add(len(chunk))
            elapsed = time.monotonic() - started
            if elapsed > GRACE_SECONDS and received < MIN_BYTES_PER_SECOND * elapsed:
                raise tuf_errors.DownloadError(f"{url} arrives at {received / elapsed:.0f} bytes/s, below the "
                                               f"{MIN_BYTES_PER_SECOND} bytes/s a mirror must keep up; try again later")
            yield chunk

    def _chunks(self, response) -> Iterator[bytes]:
        """Each piece as it arrives (read1), not a fixed-size chunk that a dripping server could take
        days to fill before the speed check above ever runs."""
        try:
            while data := response.read1(self.chunk_size):
                yield data
        except urllib3.exceptions.HTTPError as err:
            raise tuf_errors.SlowRetrievalError(f"the transfer broke off: {err}") from None
        finally:
            response.release_conn()


class DirectoryFetcher(FetcherInterface):
    """file:// URLs of a repository on a USB stick or of an unpacked bundle."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise tuf_errors.DownloadHTTPError(f"{path} not found", 404) from None
        except OSError as err:
            raise tuf_errors.DownloadError(f"{path}: {err}") from None
        with f:
            while chunk := f.read(1 << 20):
                self.progress.add(len(chunk))
                yield chunk


def _trust_root(metadata: Path) -> None:
    """Start from the newest of the image's root and the stored one.  A stored root that a power cut
    left unreadable is replaced by the image's: the client then walks the root chain again."""
    stored = metadata / "root.json"
    baked = Metadata.from_file(str(TRUSTED_ROOT)).signed.version
    try:
        if Metadata.from_bytes(stored.read_bytes()).signed.version >= baked:
            return
    except (OSError, tuf_errors.RepositoryError):
        pass
    files.write(stored, TRUSTED_ROOT.read_bytes())


def _updater(source: str, state: Path, progress: Progress) -> Updater:
    """A python-tuf client for `source`."""
    metadata = state / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    _trust_root(metadata)
    if source.startswith(("http://", "https://")):
        base, fetcher = source.rstrip("/"), CountingFetcher(progress)
    else:
        base, fetcher = Path(source).resolve().as_uri(), DirectoryFetcher(progress)
    return Updater(str(metadata), f"{base}/metadata/", str(state / "staging"), f"{base}/targets/",
                   fetcher=fetcher, config=UpdaterConfig(app_user_agent="paladin-update"))


def _judge_as_of_its_timestamp(updater: Updater, timestamp: Path) -> None:
    """An offline bundle is judged as of the moment its own signed timestamp expired, if that is past.

    A person may carry a bundle to the box months after its release; the timestamp role's 14 days
    are there to notice a frozen mirror, which a file in the owner's hand is not.  Everything else
    still holds: every signature and threshold, the root chain, hashes and lengths, metadata
    versions (never older than what the box trusts) and release versions (only forward).  A forged
    expiry cannot move the moment: the timestamp's signature is checked before any expiry is.
    docs/updates.md's threat model says what this gives up.  python-tuf has no public setting for
    its reference time; tuf is pinned below 7 and tests/update/test_update.py covers both sides.
    """
    try:
        expires = Metadata.from_file(str(timestamp)).signed.expires
    except (OSError, ValueError, tuf_errors.RepositoryError):
        return  # refresh() reports what is wrong with it
    moment = expires - datetime.timedelta(seconds=1)
    trusted = updater._trusted_set
    trusted.reference_time = min(trusted.reference_time, moment)


@dataclass(frozen=True)
class Box:
    """What this box can take: its architecture, the running version, the sizes of the slots an
    update may write, and releases it will not take again (they failed their boot assessment)."""
    arch: str
    running: str
    room: dict[str, int]
    failed: frozenset[str] = frozenset()


def choose(targets: Targets, box: Box) -> tuple[str, dict[str, TargetFile]]:
    """The newest complete release for the box; refuses other architectures, downgrades and a
    release that already failed here."""
    arch, running = box.arch, box.running
    releases_by_arch: dict[str, dict[str, dict[str, TargetFile]]] = {}
    for info in targets.targets.values():
        custom = info.custom.get("paladin")
        if isinstance(custom, dict) and custom.get("kind") in facts.KINDS:
            with contextlib.suppress(ValueError):
                facts.version_key(str(custom.get("version")))
                releases_by_arch.setdefault(custom.get("arch"), {}).setdefault(
                    custom["version"], {})[custom["kind"]] = info
    mine = releases_by_arch.get(arch)
    if not mine:
        others = ", ".join(f"{a} {max(v, key=facts.version_key)}" for a, v in releases_by_arch.items())
        raise UpdateError(f"the repository has no release for this box's architecture {arch} "
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
    missing = set(facts.KINDS) - set(mine[version])
    if missing:
        raise UpdateError(f"release {version} is incomplete: no {', '.join(sorted(missing))} target")
    return version, mine[version]


@contextlib.contextmanager
def _refusals(staging: Path) -> Iterator[None]:
    """python-tuf's errors as UpdateErrors that name the check; nothing refused stays staged."""
    try:
        yield
    except tuf_errors.RepositoryError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UpdateError(f"the update repository was refused ({type(err).__name__}): {err}") from None
    except tuf_errors.DownloadError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UpdateError(f"download failed ({type(err).__name__}): {err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def verified_release(source: Source, state: Path, progress: Progress, box: Box) -> tuple[str, dict[str, TargetFile]]:
    """Refresh the metadata from `source`, choose the release and download its targets into the staging
    directory, each checked by python-tuf; nothing else on the box is written."""
    with _refusals(state / "staging"):
        return _verified_release(source, state, progress, box)


def _verified_release(source: Source, state: Path, progress: Progress, box: Box) -> tuple[str, dict[str, TargetFile]]:
    staging = state / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (state / "tmp").mkdir(exist_ok=True)
    offline = not isinstance(source, str)
    if offline:
        # unpacked, then staged (with python-tuf's temporary copy): before a byte is written
        if problem := files.shortfall(state, 3 * bundle.unpacked_size(source)):
            raise UpdateError(problem)
        unpacked = state / "bundle"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        progress.set(phase="unpack")
        bundle.open_bundle(source, unpacked)
        source = str(unpacked)
    elif not source.startswith(("http://", "https://")) and not (Path(source) / "metadata").is_dir():
        raise UpdateError(f"{source} is neither an update repository (no metadata/) nor a bundle file")
    updater = _updater(source, state, progress)
    if offline:
        _judge_as_of_its_timestamp(updater, Path(source) / "metadata/timestamp.json")
    updater.refresh()
    os.sync()  # python-tuf renames its metadata files without fsync: make the new versions (rollback
    # protection) durable before anything else happens
    targets = Metadata[Targets].from_file(str(state / "metadata/targets.json")).signed
    version, chosen = choose(targets, box)
    progress.set(version=version)
    for kind in ("root", "verity"):
        need = chosen[kind].custom["paladin"]["raw_length"]
        if need > box.room[kind]:
            raise UpdateError(f"release {version}'s {kind} image ({need} bytes) is larger than the slot "
                              f"({box.room[kind]} bytes)")
    total = sum(info.length for info in chosen.values())
    if problem := files.shortfall(staging, total * 2):  # python-tuf writes a temporary copy, then the staged file
        raise UpdateError(problem)
    progress.set(phase="download", done=0, total=total)
    for info in chosen.values():
        updater.download_target(info, str(staging / Path(info.path).name))
    progress.set()
    uki = staging / Path(chosen["uki"].path).name
    if (uki_arch := pe_arch(uki)) != box.arch:
        raise UpdateError(f"release {version}'s UKI is built for {uki_arch or 'no known architecture'}, "
                          f"this box is {box.arch}")
    return version, chosen
