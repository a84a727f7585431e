"""Installing a verified release, and the request the web UI or the daily timer makes.

The release is fetched and verified (`fetch`), systemd-sysupdate writes the root and verity slots that
are not running (it never touches the booted version), the written partitions are read back against
the signed SHA-256 of the uncompressed bytes, and only then is the UKI installed, with 3 boot tries.
The next boot is assessed (`assess`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import channel, command, config as config_module
from . import bundle
from .assess import failed_versions
from .fetch import Box, Source, verified_release
from .progress import Progress, UpdateError
from .slots import check_slot, empty_slot, esp, kernels, machine_arch, room, sha256_prefix, sysupdate
from .status import STATE, running_version


def install(source: Source, *, state: Path = STATE, reboot: bool = False, retry_failed: bool = True) -> str:
    """Verify and install the newest release from `source` (URL, directory or open bundle); returns its
    version.  Without `retry_failed`, a release that failed its boot assessment here is not taken again."""
    label = source if isinstance(source, str) else "bundle"
    progress = Progress(state, source=label, phase="metadata")
    try:
        version = _install(source, state, progress, frozenset() if retry_failed else failed_versions(state))
    except (UpdateError, bundle.BundleError, command.CommandError, OSError) as err:
        progress.set(phase="failed", error=str(err))
        raise UpdateError(str(err)) from None
    except Exception as err:  # a defect, but the web UI must still see the attempt end rather than wait
        progress.set(phase="failed", error=f"internal error ({type(err).__name__}: {err}); see the journal")
        raise
    finally:
        shutil.rmtree(state / "bundle", ignore_errors=True)
    progress.set(phase="installed", version=version)
    if reboot:
        progress.set(phase="rebooting")
        command.run(["systemctl", "reboot"])
    return version


def _install(source: Source, state: Path, progress: Progress, failed: frozenset[str]) -> str:
    arch, running = machine_arch(), running_version()
    version, chosen = verified_release(source, state, progress, Box(arch, running, room(arch, running), failed))
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
    progress.set(phase="uki")
    sysupdate("uki.d", version)
    signed = chosen["uki"].custom["paladin"]
    installed = [k for k in kernels() if k["version"] == version]
    if not installed or sha256_prefix(esp() / "EFI/Linux" / installed[0]["file"],
                                      signed["raw_length"]) != signed["raw_sha256"]:
        raise UpdateError(f"the UKI of {version} on the ESP does not match the signed one")
    shutil.rmtree(state / "staging", ignore_errors=True)
    return version


def _refused(state: Path, message: str) -> UpdateError:
    """A request refused before any attempt began, recorded where the web UI looks."""
    Progress(state, phase="failed", error=message)
    return UpdateError(message)


def run_service(config: config_module.Config, state: Path = STATE) -> None:
    """paladin-update.service: the web UI's request (untrusted: validated by the channel), or, from
    the daily timer, the configured automatic update."""
    data_dir = config.data_path
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
        install(config.update.url, state=state, reboot=reboot, retry_failed=not automatic)
        return
    try:
        try:
            uploaded = channel.open_attachment(data_dir, "update", "bundle")
        except channel.RequestError as err:
            raise _refused(state, str(err)) from None
        with uploaded:
            install(uploaded, state=state, reboot=reboot)
    finally:
        channel.attachment(data_dir, "update", "bundle").unlink(missing_ok=True)
