"""Fetching a release and checking it, twice: python-tuf decides what is trusted.

A client refreshes the metadata (signatures, thresholds, versions, expiry: no forged, frozen or
replayed repository gets through) and downloads each target, checking length and hash before
keeping a byte.  On top of that this module refuses a release for another architecture, an older
version than the running one, one that failed here, and a root larger than a slot.

It happens in two processes.  `fetch_release` runs unprivileged (paladin-update-fetch.service): it
talks to the network or unpacks the bundle, starting from the trust root's published copy of its
metadata, and leaves a *mirror*: every metadata file it fetched, under the name it fetched it by,
and the chosen targets.  `verified_release` runs as root and trusts none of that: its own client,
from its own stored metadata, reads the mirror as a repository (no link followed, no file but a
plain one) and copies the targets into its staging directory, checked again.  So a compromised
fetcher can refuse an update, never bring in one.

Sources: an HTTP(S) repository URL, a local repository directory (a USB stick), or a bundle (an open
file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from .. import channel, facts, files
from . import bundle
from .progress import Progress, UpdateError, write_json
from .slots import pe_arch
from .status import fetch_dir

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
    """file:// URLs below `top`: a repository on a USB stick, an unpacked bundle or the fetcher's
    mirror, each written by someone the reader does not trust, so opened without following links."""

    def __init__(self, progress: Progress, top: Path):
        self.progress, self.top = progress, top

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            f = files.open_beneath(self.top, path.relative_to(self.top))
        except FileNotFoundError:
            raise tuf_errors.DownloadHTTPError(f"{path} not found", 404) from None
        except (OSError, ValueError) as err:
            raise tuf_errors.DownloadError(f"{path}: {err}") from None
        with f:
            while chunk := f.read(1 << 20):
                self.progress.add(len(chunk))
                yield chunk


class Recording(FetcherInterface):
    """Keeps each metadata file fetched under the name it was fetched by, so that the root side's
    client, starting from the same trusted state, finds in the mirror exactly what it will ask for."""

    def __init__(self, inner: FetcherInterface, base: str, into: Path):
        self.inner, self.base, self.into = inner, base, into

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(self.base)
        if name == url:  # a target: the caller stores it
            yield from self.inner._fetch(url)
            return
        if "/" in name or name.startswith("."):
            raise tuf_errors.DownloadError(f"{url} is not a metadata file name")
        data = bytearray()
        for chunk in self.inner._fetch(url):
            data += chunk
            yield chunk
        files.write(self.into / name, bytes(data), mode=0o600)  # only once python-tuf read it to the end


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


ROLES = ("root", "timestamp", "snapshot", "targets")


def trust(state: Path) -> Path:
    """The root side's trusted metadata, published for the unprivileged fetcher (readable by all:
    it is signed and public) so that both start from the same versions; returns where."""
    metadata, published = state / "metadata", state / "trusted"
    metadata.mkdir(parents=True, exist_ok=True)
    published.mkdir(exist_ok=True)
    published.chmod(0o755)  # not left to the updater's umask (0077): the fetcher is another user
    _trust_root(metadata)
    for role in ROLES:
        try:
            files.write(published / f"{role}.json", (metadata / f"{role}.json").read_bytes(), mode=0o644)
        except FileNotFoundError:
            (published / f"{role}.json").unlink(missing_ok=True)
    return published


def _updater(source: str, metadata: Path, fetcher: FetcherInterface, **config) -> Updater:
    """A python-tuf client for the repository at `source`, its trusted state in `metadata`."""
    return Updater(str(metadata), f"{source.rstrip('/')}/metadata/", None, f"{source.rstrip('/')}/targets/",
                   fetcher=fetcher, config=UpdaterConfig(app_user_agent="paladin-update", **config))


def _judge_as_of_its_timestamp(updater: Updater, repository: Path) -> None:
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
        with files.open_beneath(repository, "metadata/timestamp.json") as f:
            expires = Metadata.from_bytes(f.read(updater.config.timestamp_max_length)).signed.expires
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


@dataclass(frozen=True)
class Job:
    """What the root side asks of the unprivileged fetcher, left in the root side's state directory
    (the fetcher reads it there and writes nothing back but its own work directory)."""
    source: str  # a repository URL or directory, or "bundle": the one uploaded through the request channel
    data_dir: str
    box: Box

    NAME = "job.json"

    def save(self, state: Path) -> None:
        box = dataclasses.asdict(self.box) | {"failed": sorted(self.box.failed)}
        write_json(state / self.NAME, {"source": self.source, "data_dir": self.data_dir, "box": box})

    @classmethod
    def load(cls, state: Path) -> Job:
        raw = json.loads((state / cls.NAME).read_text())
        box = raw["box"] | {"failed": frozenset(raw["box"]["failed"])}
        return cls(raw["source"], raw["data_dir"], Box(**box))


def run_fetcher(state: Path) -> str:
    """paladin-update-fetch.service: the job the root side left in `state`, its progress and its
    outcome in the work directory, where the root side and the web UI read them."""
    job = Job.load(state)
    data_dir = Path(job.data_dir)
    work = fetch_dir(data_dir)
    progress = Progress(work, source=job.source, phase="metadata")
    try:
        if job.source == "bundle":
            with channel.open_attachment(data_dir, "update", "bundle") as uploaded:
                version = fetch_release(uploaded, work, state / "trusted", progress, job.box)
        else:
            version = fetch_release(job.source, work, state / "trusted", progress, job.box)
    except (UpdateError, bundle.BundleError, channel.RequestError, OSError) as err:
        progress.set(phase="failed", error=str(err))
        raise UpdateError(str(err)) from None
    progress.set(phase="fetched", version=version)
    return version


@contextlib.contextmanager
def _refusals(*leftovers: Path) -> Iterator[None]:
    """python-tuf's errors as UpdateErrors that name the check; nothing refused stays behind."""
    try:
        yield
    except BaseException as err:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(err, tuf_errors.RepositoryError):
            raise UpdateError(f"the update repository was refused ({type(err).__name__}): {err}") from None
        if isinstance(err, tuf_errors.DownloadError):
            raise UpdateError(f"download failed ({type(err).__name__}): {err}") from None
        raise


def _refresh(updater: Updater, metadata: Path, box: Box, bundle_at: Path | None) -> tuple[str, dict[str, TargetFile]]:
    """The metadata refreshed and the release for `box` chosen from it; `bundle_at`: the repository
    is a bundle's, judged as of its own timestamp."""
    if bundle_at is not None:
        _judge_as_of_its_timestamp(updater, bundle_at)
    updater.refresh()
    os.sync()  # python-tuf renames its metadata files without fsync: make the new versions (rollback
    # protection) durable before anything else happens
    version, chosen = choose(Metadata[Targets].from_file(str(metadata / "targets.json")).signed, box)
    for kind in ("root", "verity"):
        need = chosen[kind].custom["paladin"]["raw_length"]
        if need > box.room[kind]:
            raise UpdateError(f"release {version}'s {kind} image ({need} bytes) is larger than the slot "
                              f"({box.room[kind]} bytes)")
    return version, chosen


def _check_uki(uki: Path, version: str, box: Box) -> None:
    if (uki_arch := pe_arch(uki)) != box.arch:
        raise UpdateError(f"release {version}'s UKI is built for {uki_arch or 'no known architecture'}, "
                          f"this box is {box.arch}")


def _download(updater: Updater, version: str, chosen: dict[str, TargetFile], box: Box, progress: Progress,
              directory: Path, place: Callable[[TargetFile], Path]) -> None:
    """The chosen targets where `place` puts them in `directory`, each checked by python-tuf, and the UKI's
    architecture; refused before a byte is written unless twice their size fits there (python-tuf
    writes a temporary copy, then the file)."""
    total = sum(info.length for info in chosen.values())
    if problem := files.shortfall(directory, total * 2):
        raise UpdateError(problem)
    progress.set(done=0, total=total)
    for info in chosen.values():
        updater.download_target(info, str(place(info)))
    progress.set()
    _check_uki(place(chosen["uki"]), version, box)


def _mirrored(info: TargetFile) -> Path:
    """Where a target lies in the mirror: by its path, which the root side's client asks for."""
    path = Path(info.path)
    if path.is_absolute() or ".." in path.parts:
        raise UpdateError(f"the target path {info.path!r} leaves the repository")
    return Path("targets") / path


def fetch_release(source: Source, work: Path, trusted: Path, progress: Progress, box: Box) -> str:
    """Unprivileged: refresh the metadata from `source` as the box trusts it (`trusted`), choose the
    release and leave it in `work/mirror`, checked; returns its version."""
    mirror, unpacked = work / "mirror", work / "bundle"
    with _refusals(mirror, unpacked):
        try:
            return _fetch_release(source, work, trusted, progress, box)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)


def _fetch_release(source: Source, work: Path, trusted: Path, progress: Progress, box: Box) -> str:
    metadata, mirror, unpacked = work / "metadata", work / "mirror", work / "bundle"
    for old in (metadata, mirror, unpacked):
        shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(trusted, metadata)
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    offline = not isinstance(source, str)
    if offline:
        # unpacked, then copied into the mirror (through python-tuf's temporary copy): before a byte is written
        if problem := files.shortfall(work, 3 * bundle.unpacked_size(source)):
            raise UpdateError(problem)
        unpacked.mkdir()
        progress.set(phase="unpack")
        bundle.open_bundle(source, unpacked)
        source = str(unpacked)
    elif not source.startswith(("http://", "https://")) and not (Path(source) / "metadata").is_dir():
        raise UpdateError(f"{source} is neither an update repository (no metadata/) nor a bundle file")
    if source.startswith(("http://", "https://")):
        inner: FetcherInterface = CountingFetcher(progress)
    else:
        top = Path(source).resolve()
        source, inner = top.as_uri(), DirectoryFetcher(progress, top)
    base = f"{source.rstrip('/')}/metadata/"
    updater = _updater(source, metadata, Recording(inner, base, mirror / "metadata"))
    progress.set(phase="metadata")
    version, chosen = _refresh(updater, metadata, box, unpacked if offline else None)
    progress.set(version=version, phase="download")
    _download(updater, version, chosen, box, progress, work, lambda info: mirror / _mirrored(info))
    return version


def verified_release(mirror: Path, state: Path, progress: Progress, box: Box, *, offline: bool) -> tuple[str, dict[str, TargetFile]]:
    """Root: the fetcher's `mirror` checked again by a client of its own, from the stored trusted
    metadata, and the chosen release copied into the staging directory; nothing else is written."""
    staging = state / "staging"
    with _refusals(staging):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (state / "tmp").mkdir(exist_ok=True)
        _trust_root(state / "metadata")
        progress.set(phase="check")
        updater = _updater(mirror.as_uri(), state / "metadata", DirectoryFetcher(progress, mirror),
                           prefix_targets_with_hash=False)
        version, chosen = _refresh(updater, state / "metadata", box, mirror if offline else None)
        _download(updater, version, chosen, box, progress, staging, lambda info: staging / Path(info.path).name)
        return version, chosen
