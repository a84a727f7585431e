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
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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


class CountingFetcher(Urllib3Fetcher):
    def __init__(self, progress: Progress):
        super().__init__(app_user_agent="paladin-update")
        self.progress = progress

    def _fetch(self, url: str) -> Iterator[bytes]:
        for chunk in super()._fetch(url):
            self.progress.add(len(chunk))
            yield chunk


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


def choose(targets: Targets, arch: str, running: str) -> tuple[str, dict[str, TargetFile]]:
    """The newest complete release for `arch`; refuses other architectures and downgrades."""
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


def verified_release(source: Source, state: Path, progress: Progress, *, arch: str, running: str,
                     room: dict[str, int]) -> tuple[str, dict[str, TargetFile]]:
    """Refresh the metadata from `source`, choose the release and download its targets into the staging
    directory, each checked by python-tuf; nothing else on the box is written."""
    with _refusals(state / "staging"):
        return _verified_release(source, state, progress, arch=arch, running=running, room=room)


def _verified_release(source: Source, state: Path, progress: Progress, *, arch: str, running: str,
                      room: dict[str, int]) -> tuple[str, dict[str, TargetFile]]:
    staging = state / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (state / "tmp").mkdir(exist_ok=True)
    if not isinstance(source, str):
        unpacked = state / "bundle"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        progress.set(phase="unpack")
        bundle.open_bundle(source, unpacked)
        source = str(unpacked)
    elif not source.startswith(("http://", "https://")) and not (Path(source) / "metadata").is_dir():
        raise UpdateError(f"{source} is neither an update repository (no metadata/) nor a bundle file")
    updater = _updater(source, state, progress)
    updater.refresh()
    os.sync()  # python-tuf renames its metadata files without fsync: make the new versions (rollback
    # protection) durable before anything else happens
    targets = Metadata[Targets].from_file(str(state / "metadata/targets.json")).signed
    version, chosen = choose(targets, arch, running)
    progress.set(version=version)
    for kind in ("root", "verity"):
        need = chosen[kind].custom["paladin"]["raw_length"]
        if need > room[kind]:
            raise UpdateError(f"release {version}'s {kind} image ({need} bytes) is larger than the slot "
                              f"({room[kind]} bytes)")
    total = sum(info.length for info in chosen.values())
    free = shutil.disk_usage(staging).free
    if total * 2 > free:  # python-tuf keeps a verified temporary copy while writing the staged file
        raise UpdateError(f"not enough space on the data partition: {total * 2} bytes needed, {free} free")
    progress.set(phase="download", done=0, total=total)
    for info in chosen.values():
        updater.download_target(info, str(staging / Path(info.path).name))
    progress.set()
    uki = staging / Path(chosen["uki"].path).name
    if (uki_arch := pe_arch(uki)) != arch:
        raise UpdateError(f"release {version}'s UKI is built for {uki_arch or 'no known architecture'}, "
                          f"this box is {arch}")
    return version, chosen
