"""An image build, as one linear pipeline: signing keys, host packages and disk space, binfmt, mkosi,
wheels, the extra tree, mkosi build, compression."""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

from appliance import facts
from appliance.layout import DataDir

from . import CACHE, ROOT, rpi
from .debian import ensure_host_packages, mkosi, MKOSI_SUITE
from .steps import StepError, run, say, step
from .wheels import image_wheels, run_in_venv

BUILD_PACKAGES = ["build-essential", "cmake", "python3-venv", "python3-dev", "unzip"]
IMAGE_PACKAGES = BUILD_PACKAGES + ["gpgv", "debian-archive-keyring", "xz-utils", "zstd", "apt", "fdisk"]
IMAGE_GIB = 10  # mkosi's trees, the 3 GiB raw image and its copy while compressing


def ensure_binfmt(machine: str) -> None:
    """A foreign-architecture image runs its package scripts under qemu-user: register it with the kernel
    (done by hand because a container's PID 1 may not be systemd, which would otherwise do it)."""
    if machine == platform.machine() or Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}").exists():
        return
    ensure_host_packages(["qemu-user-static"])
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
            hint="binfmt_misc must be mountable (a privileged container or a VM)")
    Path("/proc/sys/fs/binfmt_misc/register").write_text(
        Path(f"/usr/lib/binfmt.d/qemu-{machine}.conf").read_text().strip())


def ensure_space(*directories: Path, gib: int = IMAGE_GIB) -> None:
    for directory in directories:
        free = shutil.disk_usage(directory).free / 2**30
        if free < gib:
            raise StepError(f"low disk: {free:.1f} GiB free in {directory}, an image build needs about {gib} GiB",
                            "free some space or point XDG_CACHE_HOME / --out elsewhere")


def default_keys() -> Path:
    """Where the release signing keys live: outside the repository, never in an image."""
    return Path(os.environ.get("PALADIN_KEYS") or Path.home() / ".config/paladin/keys")


def default_version() -> str:
    return time.strftime("%Y.%m.%d.%H%M")


def check_version(version: str) -> str:
    try:
        facts.version_key(version)
    except ValueError as err:
        raise StepError(str(err)) from None
    return version


def _mkosi_build(argv: list, work: Path) -> None:
    try:
        run([*argv, "--force", "build"], log=work / "mkosi.log")
    except StepError:
        # mkosi's incremental cache of the default initrd can go stale after a package change
        # (seen: apt then removes kmod with dpkg and fails); a clean rebuild fixes it.
        shutil.copy(work / "mkosi.log", work / "mkosi.failed.log")  # the retry's log replaces it
        say(f"mkosi failed (its log kept as {work / 'mkosi.failed.log'}); rebuilding once without its "
            "incremental cache (-ff)")
        run([*argv, "--force", "--force", "build"], log=work / "mkosi.log", hint=f"see {work / 'mkosi.log'}")


def build_image(arch: str, version: str, out: Path, model: Path | None, keys: Path,
                extra_tree: Path | None = None, compress: bool = True, board: str = "uefi") -> dict:
    """Build DIR/paladin_VERSION_ARCH.raw (+ .zst unless not `compress`: an image only booted in qemu or
    released needs none) and the split update artifacts beside it.  `board` "rpi" (arm64 only) builds the
    Raspberry Pi 4/5 image instead (mkosi profile rpi, DIR/paladin_VERSION_ARCH-rpi.raw: docs/image.md)."""
    check_version(version)
    if board not in facts.BOARDS or arch not in facts.BOARDS[board]:
        raise StepError(f"--board {board} does not exist for --arch {arch}",
                        "boards: " + ", ".join(f"{b} ({'/'.join(a)})" for b, a in facts.BOARDS.items()))
    out.mkdir(parents=True, exist_ok=True)
    flavour = facts.flavour(arch, board)
    work = CACHE / "image" / flavour
    name = facts.image_name(version, flavour)
    with step("update signing keys (the image trusts their root metadata)"):
        trusted_root = keys / "root.json"
        if not trusted_root.exists():
            say(f"no signing keys in {keys}: making them (build.py keys init)")
            run_in_venv("release", "keys-init", "--keys", keys)
    with step("host packages and disk space"):
        ensure_host_packages(IMAGE_PACKAGES + (rpi.HOST_PACKAGES if board == "rpi" else []))
        ensure_space(CACHE, out)
    with step(f"binfmt for {arch}"):
        ensure_binfmt(facts.ARCHES[arch]["machine"])
    with step(f"mkosi from Debian {MKOSI_SUITE}"):
        mkosi_argv = mkosi()
    with step(f"wheels for the image ({arch})"):
        wheels = image_wheels(arch, work)
    extra = work / "extra-tree"
    shutil.rmtree(extra, ignore_errors=True)
    root_json = extra / facts.TRUSTED_ROOT.relative_to("/")
    root_json.parent.mkdir(parents=True)
    shutil.copy(trusted_root, root_json)
    if model is not None:
        models = extra / DataDir().models.relative_to("/")
        models.mkdir(parents=True)
        shutil.copy(model, models / model.name)
    started = time.monotonic()
    argv = [*mkosi_argv, "--directory", ROOT / "image", "--architecture", arch, "--image-version", version,
            "--unified-kernel-image-format", facts.uki_name(version),
            "--output", name, "--output-directory", out, "--workspace-directory", work,
            "--cache-directory", CACHE / "mkosi-cache" / flavour,
            *(["--profile", board] if board != "uefi" else []), "--build-sources", f"{wheels}:wheels",
            "--extra-tree", f"{extra}:/", *(["--extra-tree", f"{extra_tree}:/"] if extra_tree else [])]
    with step(f"mkosi build of {name}"):
        _mkosi_build(argv, work)
    raw = out / f"{name}.raw"
    report = {"image": str(raw), "arch": arch, "board": board, "version": version}
    if board == "rpi":
        with step("Raspberry Pi boot partition: initrd and cmdline.txt with the root hash"):
            report |= rpi.finish_boot_partition(raw, out / name, version)
    report |= {"raw_bytes": raw.stat().st_size, "build_seconds": round(time.monotonic() - started)}
    if compress:
        with step("compress for flashing (zstd)"):
            run(["zstd", "-q", "-f", "-T0", "-10", raw, "-o", f"{raw}.zst"])
        report |= {"compressed": f"{raw}.zst", "compressed_bytes": Path(f"{raw}.zst").stat().st_size}
    say(f"{raw}: {report['raw_bytes'] / 2**20:.0f} MiB raw"
        + (f", {report['compressed_bytes'] / 2**20:.0f} MiB zstd" if compress else ", not compressed"))
    return report
