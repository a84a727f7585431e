"""python-tuf for both sides of an update: it decides what is trusted.

A client refreshes the metadata (signatures, thresholds, versions, expiry: no forged, frozen or
replayed repository gets through) and downloads each target, checking length and hash before
keeping a byte.  Here: the fetchers it reads through (HTTP with a speed floor, a directory without
following links, and the recording of what the unprivileged side fetched), the trusted metadata
each side starts from, the client, and the two checked steps, refresh and download.  The unprivileged
fetcher (fetcher.py) and root's second check (verify.py) each run their own client.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from .. import facts, files
from ..layout import UpdateState
from .progress import Progress, UpdateError
from .release import Box, check_uki, for_box

TRUSTED_ROOT = Path(facts.TRUSTED_ROOT)


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


def trust_root(metadata: Path) -> None:
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


def publish(state: UpdateState) -> Path:
    """The root side's trusted metadata, published for the unprivileged fetcher (readable by all:
    it is signed and public) so that both start from the same versions; returns where."""
    metadata, published = state.metadata, state.trusted
    metadata.mkdir(parents=True, exist_ok=True)
    published.mkdir(exist_ok=True)
    published.chmod(0o755)  # not left to the updater's umask (0077): the fetcher is another user
    trust_root(metadata)
    for role in ROLES:
        try:
            files.write(published / f"{role}.json", (metadata / f"{role}.json").read_bytes(), mode=0o644)
        except FileNotFoundError:
            (published / f"{role}.json").unlink(missing_ok=True)
    return published


def client(source: str, metadata: Path, fetcher: FetcherInterface, **config) -> Updater:
    """A python-tuf client for the repository at `source`, its trusted state in `metadata`."""
    return Updater(str(metadata), f"{source.rstrip('/')}/metadata/", None, f"{source.rstrip('/')}/targets/",
                   fetcher=fetcher, config=UpdaterConfig(app_user_agent="paladin-update", **config))


def judge_as_of_its_timestamp(updater: Updater, repository: Path) -> None:
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


@contextlib.contextmanager
def refusals(*leftovers: Path) -> Iterator[None]:
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


def refresh(updater: Updater, metadata: Path, box: Box, bundle_at: Path | None) -> tuple[str, dict[str, TargetFile]]:
    """The metadata refreshed and the release for `box` chosen from it; `bundle_at`: the repository
    is a bundle's, judged as of its own timestamp."""
    if bundle_at is not None:
        judge_as_of_its_timestamp(updater, bundle_at)
    updater.refresh()
    os.sync()  # python-tuf renames its metadata files without fsync: make the new versions (rollback
    # protection) durable before anything else happens
    return for_box(Metadata[Targets].from_file(str(metadata / "targets.json")).signed, box)


def download(updater: Updater, version: str, chosen: dict[str, TargetFile], box: Box, progress: Progress,
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
    if "uki" in chosen:
        check_uki(place(chosen["uki"]), version, box)
