"""paladin-update-fetch: the unprivileged half of an update (paladin-update-fetch.service, user paladin).

Root's updater leaves a job in its state directory; this talks to the network or unpacks the bundle,
starting from the trust root's published copy of its metadata, and leaves a *mirror*: every metadata
file it fetched, under the name it fetched it by, and the chosen targets.  Root trusts none of that
(verify.py): a compromised fetcher can refuse an update, never bring in one.

Sources: an HTTP(S) repository URL, a local repository directory (a USB stick), or a bundle (an open
file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface

from .. import channel, files, logs
from ..layout import DataDir, FetchWork, UpdateState
from . import bundle
from .progress import Progress, UpdateError, write_json
from .release import Box
from .trust import CountingFetcher, DirectoryFetcher, Recording, client, download, refresh, refusals

log = logging.getLogger("paladin-update-fetch")
Source = str | BinaryIO  # a URL or a repository directory, or an open bundle file


@dataclass(frozen=True)
class Job:
    """What the root side asks of the unprivileged fetcher, left in the root side's state directory
    (the fetcher reads it there and writes nothing back but its own work directory)."""
    source: str  # a repository URL or directory, or "bundle": the one uploaded through the request channel
    data_dir: str
    box: Box

    def save(self, state: UpdateState) -> None:
        box = dataclasses.asdict(self.box) | {"failed": sorted(self.box.failed)}
        write_json(state.job, {"source": self.source, "data_dir": self.data_dir, "box": box})

    @classmethod
    def load(cls, state: UpdateState) -> Job:
        raw = json.loads(state.job.read_text())
        box = raw["box"] | {"failed": frozenset(raw["box"]["failed"])}
        return cls(raw["source"], raw["data_dir"], Box(**box))


def run_fetcher(state: UpdateState) -> str:
    """paladin-update-fetch.service: the job the root side left in `state`, its progress and its
    outcome in the work directory, where the root side and the web UI read them."""
    job = Job.load(state)
    data_dir = Path(job.data_dir)
    work = DataDir(data_dir).update
    progress = Progress(work.status, source=job.source, phase="metadata")
    try:
        if job.source == "bundle":
            with channel.open_attachment(data_dir, "update", "bundle") as uploaded:
                version = fetch_release(uploaded, work, state.trusted, progress, job.box)
        else:
            version = fetch_release(job.source, work, state.trusted, progress, job.box)
    except (UpdateError, bundle.BundleError, channel.RequestError, OSError) as err:
        progress.set(phase="failed", error=str(err))
        raise UpdateError(str(err)) from None
    progress.set(phase="fetched", version=version)
    return version


def _mirrored(info: TargetFile) -> Path:
    """Where a target lies in the mirror: by its path, which the root side's client asks for."""
    path = Path(info.path)
    if path.is_absolute() or ".." in path.parts:
        raise UpdateError(f"the target path {info.path!r} leaves the repository")
    return Path("targets") / path


def fetch_release(source: Source, work: FetchWork, trusted: Path, progress: Progress, box: Box) -> str:
    """Unprivileged: refresh the metadata from `source` as the box trusts it (`trusted`), choose the
    release and leave it in `work.mirror`, checked; returns its version."""
    with refusals(work.mirror, work.bundle):
        try:
            return _fetch_release(source, work, trusted, progress, box)
        finally:
            shutil.rmtree(work.bundle, ignore_errors=True)


def _fetch_release(source: Source, work: FetchWork, trusted: Path, progress: Progress, box: Box) -> str:
    metadata, mirror, unpacked = work.metadata, work.mirror, work.bundle
    for old in (metadata, mirror, unpacked):
        shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(trusted, metadata)
    work.tmp.mkdir(parents=True, exist_ok=True)
    offline = not isinstance(source, str)
    if offline:
        # unpacked, then copied into the mirror (through python-tuf's temporary copy): before a byte is written
        if problem := files.shortfall(work.root, 3 * bundle.unpacked_size(source)):
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
    updater = client(source, metadata, Recording(inner, base, mirror / "metadata"))
    progress.set(phase="metadata")
    version, chosen = refresh(updater, metadata, box, unpacked if offline else None)
    progress.set(version=version, phase="download")
    download(updater, version, chosen, box, progress, work.root, lambda info: mirror / _mirrored(info))
    return version


def main() -> None:
    logs.setup()
    try:
        print(f"fetched {run_fetcher(UpdateState())}")
    except (UpdateError, OSError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None
