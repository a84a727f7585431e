"""Installing a verified release, and the request the web UI or the daily timer makes.

The release is fetched and checked unprivileged (`fetcher.py`, in paladin-update-fetch.service when the
web UI or the timer asks), checked again by root from what the fetcher left (`verify.py`),
systemd-sysupdate writes the root and verity slots that are not running (it never touches the booted
version), the written partitions are read back against the signed
SHA-256 of the uncompressed bytes, and only then does the boot loader get the release's boot files,
armed for one trial (`loader.py`: a UKI with 3 tries, or a Raspberry Pi's tryboot).  The next
boot is assessed (`assess`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from .. import channel, command, config as config_module, files
from ..layout import DataDir, UpdateState
from . import bundle
from .assess import failed_versions
from .fetcher import Job, Source, fetch_release
from .loader import Loader, loader
from .progress import Progress, UpdateError
from .release import Box
from .slots import check_slot, empty_slot, machine_arch, room, sysupdate
from .status import running_version
from .trust import publish
from .verify import verified_release

FETCH_UNIT = "paladin-update-fetch.service"
# Fetching leaves a mirror of the release; this gets it there (box, progress, trusted metadata).
Fetch = Callable[[Box, Progress, Path], Path]


def install(source: Source, *, state: UpdateState = UpdateState(), reboot: bool = False,
            retry_failed: bool = True) -> str:
    """Verify and install the newest release from `source` (URL, directory or open bundle); returns its
    version.  Both halves run in this process: the root user named the source at the console."""
    work = state.fetch

    def fetched(box: Box, progress: Progress, trusted: Path) -> Path:
        fetch_release(source, work, trusted, progress, box)
        return work.mirror

    try:
        return _attempt(state, source if isinstance(source, str) else "bundle", fetched,
                        offline=not isinstance(source, str), reboot=reboot, retry_failed=retry_failed)
    finally:
        shutil.rmtree(work.root, ignore_errors=True)


def _attempt(state: UpdateState, label: str, fetched: Fetch, *, offline: bool, reboot: bool, retry_failed: bool) -> str:
    """One update attempt, recorded in status.json from start to end.  Without `retry_failed`, a
    release that failed its boot assessment here is not taken again."""
    progress = Progress(state.status, source=label, phase="metadata")
    try:
        boot = loader()
        if refusal := boot.refusal():
            raise UpdateError(refusal)
        arch, running = machine_arch(), running_version()
        box = Box(arch, running, room(arch, running), frozenset() if retry_failed else failed_versions(state),
                  boot.board)
        version = _install(fetched(box, progress, publish(state)), state, progress, box, offline, boot)
    except (UpdateError, bundle.BundleError, command.CommandError, OSError) as err:
        progress.set(phase="failed", error=str(err))
        raise UpdateError(str(err)) from None
    except Exception as err:  # a defect, but the web UI must still see the attempt end rather than wait
        progress.set(phase="failed", error=f"internal error ({type(err).__name__}: {err}); see the journal")
        raise
    progress.set(phase="installed", version=version)
    if reboot:
        progress.set(phase="rebooting")
        boot.reboot()
    return version


def _install(mirror: Path, state: UpdateState, progress: Progress, box: Box, offline: bool, boot: Loader) -> str:
    version, chosen = verified_release(mirror, state, progress, box, offline=offline)
    arch = box.arch
    progress.set(phase="write")
    sysupdate("slot.d", version)
    progress.set(phase="verify")
    for kind in ("root", "verity"):
        if problem := check_slot(version, kind, chosen[kind], arch):
            # A power cut during an earlier attempt can leave a labelled but partial slot: rewrite once.
            empty_slot(version, kind, arch)
            progress.set(phase="write")
            sysupdate("slot.d", version)
            progress.set(phase="verify")
            if problem := check_slot(version, kind, chosen[kind], arch):
                raise UpdateError(f"the written slot failed verification: {problem}")
    progress.set(phase=boot.phase)
    boot.install(version, chosen, arch)
    shutil.rmtree(state.staging, ignore_errors=True)
    return version


def _refused(state: UpdateState, message: str) -> UpdateError:
    """A request refused before any attempt began, recorded where the web UI looks."""
    Progress(state.status, phase="failed", error=message)
    return UpdateError(message)


def _fetcher_error(data_dir: Path) -> str:
    """Why the unprivileged fetcher gave up, from its status file: untrusted text, so bounded and
    stripped to printable characters before it reaches the web UI."""
    try:
        data = DataDir(data_dir)
        with files.open_beneath(data.root, data.beneath(data.update.status)) as f:
            error = json.loads(f.read(64 * 1024)).get("error")
    except (OSError, ValueError, AttributeError):
        error = None
    if not isinstance(error, str) or not error:
        return f"fetching the release failed; see journalctl -u {FETCH_UNIT}"
    return "".join(c for c in error[:1000] if c.isprintable())


def _by_the_fetcher(state: UpdateState, source: str, data_dir: Path) -> Fetch:
    """Fetching as paladin-update-fetch.service does it: unprivileged, told what to do in `job.json`."""

    def fetched(box: Box, progress: Progress, trusted: Path) -> Path:
        Job(source, str(data_dir), box).save(state)
        progress.set(phase="fetch")
        try:
            command.run(["systemctl", "start", FETCH_UNIT])
        except command.CommandError:
            raise UpdateError(_fetcher_error(data_dir)) from None
        return DataDir(data_dir).update.mirror

    return fetched


def run_service(config: config_module.Config, state: UpdateState = UpdateState()) -> None:
    """paladin-update.service: the web UI's request (untrusted: validated by the channel), or, from
    the daily timer, the configured automatic update."""
    data_dir, data = config.data_path, DataDir(config.data_path)
    try:
        request = channel.take(data_dir, "update")
    except channel.RequestError as err:
        raise _refused(state, f"refused the web UI's request: {err}") from None
    automatic = request is None
    if automatic:
        if not (config.update.automatic and config.update.url):
            print("automatic updates are off (update.automatic); nothing to do")
            return
        request = channel.UpdateRequest(source="online")
    reboot = config.update.reboot if request.reboot is None else request.reboot
    if request.source == "online":
        if not config.update.url:
            raise _refused(state, "no update repository is configured: set update.url, or upload a bundle")
        source = config.update.url
    else:
        try:
            channel.open_attachment(data_dir, "update", "bundle").close()
        except channel.RequestError as err:
            raise _refused(state, str(err)) from None
        source = "bundle"
    try:
        _attempt(state, source, _by_the_fetcher(state, source, data_dir), offline=source == "bundle",
                 reboot=reboot, retry_failed=not automatic)
    finally:
        channel.remove_attachment(data_dir, "update", "bundle")
        files.remove_beneath(data_dir, data.beneath(data.update.mirror))
