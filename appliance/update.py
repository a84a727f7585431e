"""`paladin-update`: signed A/B updates on the box.

python-tuf decides what is trusted: it refreshes the metadata (signatures, thresholds, versions,
expiry: no forged, frozen or replayed repository gets through) and downloads each target into the
staging directory, checking length and hash before keeping a byte.  On top of that this module
refuses a release for another architecture, an older version than the running one, and a root
larger than a slot.  systemd-sysupdate then writes the root and verity slots that are not running
(it never touches the booted version); the written partitions are read back against the signed
SHA-256 of the uncompressed bytes; only then is the UKI installed, with 3 boot tries.  The next
boot is assessed (`assess`): if the assistant does not answer, the box reboots until the tries run
out and systemd-boot falls back to the previous version.

Sources: an HTTP(S) repository URL, a local repository directory (a USB stick), or a bundle file.
The data partition is never written, except this tool's own state under /var/lib/paladin-update.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import struct
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from . import command, config as config_module, releases

STATE = Path(os.environ.get("PALADIN_UPDATE_STATE", "/var/lib/paladin-update"))
DEFINITIONS = Path("/usr/lib/paladin-update")
SYSUPDATE = "/usr/lib/systemd/systemd-sysupdate"  # not on PATH: a tool of systemd's, from systemd-container
TRUSTED_ROOT = DEFINITIONS / "root.json"
OS_RELEASE = Path("/usr/lib/os-release")
EFIVARS = Path("/sys/firmware/efi/efivars")
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's vendor GUID for its EFI variables
ESP_MOUNTS = (Path("/boot"), Path("/efi"))
ARCH = {"x86_64": "x86-64", "aarch64": "arm64"}
PE_MACHINE = {0x8664: "x86-64", 0xAA64: "arm64"}
# The GPT partition types of the root and verity slots (Discoverable Partitions Specification).
SLOT_TYPES = {
    "x86-64": {"root": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "verity": "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"},
    "arm64": {"root": "b921b045-1df0-41c3-af44-4c6f280d3fae", "verity": "df3300ce-d69f-4c92-978c-9bfb0f38d820"},
}
HEALTH_DEADLINE = 8 * 60  # under the unit's TimeoutStartSec; a first boot may load a large model
KEEP_ATTEMPTS = 20


class UpdateError(RuntimeError):
    """An update was refused or failed; the message says which check and why. No slot in use was touched."""


# -- the box -----------------------------------------------------------------

def os_release(path: Path = OS_RELEASE) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip().strip('"')
    return fields


def running_version() -> str:
    return os_release().get("IMAGE_VERSION", "0")


def machine_arch() -> str:
    return ARCH[platform.machine()]


def _efivar(name: str) -> str | None:
    path = EFIVARS / f"{name}-{LOADER_GUID}"
    try:
        return path.read_bytes()[4:].decode("utf-16-le").rstrip("\0")
    except OSError:
        return None


def boot_counted() -> bool:
    """Whether this boot is being assessed: systemd-boot counts tries for the entry it booted."""
    return _efivar("LoaderBootCountPath") is not None


def booted_root_uuid() -> str | None:
    """The booted root slot's PARTUUID (undashed): the first half of the UKI's root hash."""
    for arg in Path("/proc/cmdline").read_text().split():
        if arg.startswith("roothash="):
            return arg.partition("=")[2][:32].lower()
    return None


def slots(arch: str | None = None) -> list[dict]:
    """The root and verity partitions: device, number, label, version, PARTUUID, size, whether booted.

    Read from the partition table on disk (sfdisk): udev's copy of a label lags behind a relabel by
    systemd-sysupdate while the disk is in use.
    """
    types = {v: k for k, v in SLOT_TYPES[arch or machine_arch()].items()}
    listing = json.loads(command.run(["lsblk", "--json", "-o", "PKNAME,PARTTYPE"]))["blockdevices"]
    disk = next((d["pkname"] for d in listing if (d.get("parttype") or "").lower() in types), None)
    if disk is None:
        raise UpdateError("no disk with root slots found")
    table = json.loads(command.run(["sfdisk", "--json", f"/dev/{disk}"]))["partitiontable"]
    booted = booted_root_uuid()
    found = []
    for part in table["partitions"]:
        kind = types.get(part["type"].lower())
        if kind:
            label = part.get("name", "")
            version = label.removeprefix("paladin_").removesuffix("_verity") if label.startswith("paladin_") else None
            uuid = part["uuid"].replace("-", "").lower()
            found.append({"kind": kind, "disk": f"/dev/{disk}", "device": part["node"],
                          "number": int(re.search(r"(\d+)$", part["node"]).group(1)), "label": label,
                          "version": version, "uuid": uuid, "size": part["size"] * table.get("sectorsize", 512),
                          "booted": kind == "root" and uuid == booted})
    return found


def esp() -> Path:
    for mount in ESP_MOUNTS:
        if (mount / "EFI").is_dir():
            return mount
    raise UpdateError("the EFI system partition is not mounted at /boot or /efi")


def kernels() -> list[dict]:
    """The UKIs on the ESP and their boot-assessment state (Boot Loader Specification's counters)."""
    selected = _efivar("LoaderEntrySelected")
    entries = []
    for path in sorted((esp() / "EFI/Linux").glob("paladin_*.efi")):
        name, _, counter = path.stem.partition("+")
        left, _, done = counter.partition("-")
        state = "good" if not counter else ("bad" if left == "0" else "trying")
        entries.append({"file": path.name, "version": name.removeprefix("paladin_"), "state": state,
                        "tries_left": int(left) if left else None, "tries_done": int(done) if done else None,
                        "selected": selected is not None and selected.split("+")[0].removesuffix(".efi") == name})
    return entries


# -- state shared with the web UI ---------------------------------------------

def _write_durably(path: Path, data: bytes) -> None:
    """`path` holds `data` or its old content after a power cut, never a torn or empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(partial, 0o644)  # state files are read by the unprivileged assistant for its status page
    partial.replace(path)


def _write_json(path: Path, data) -> None:
    _write_durably(path, json.dumps(data, indent=1).encode())


def read_state(path: Path, default):
    """A JSON state file, or `default` when it is missing or half-written by an older crash."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


class Progress:
    """The current update's phase, byte counts and seconds per phase in status.json; byte counts are
    written at most twice a second."""

    def __init__(self, state: Path, **fields):
        self.path = state / "status.json"
        self.fields = {"phase": "starting", "running": running_version(), "error": None, "seconds": {}} | fields
        self.last = self.phase_started = time.monotonic()
        self.set()

    def set(self, **fields) -> None:
        now = time.monotonic()
        if fields.get("phase", self.fields["phase"]) != self.fields["phase"]:
            spent = self.fields["seconds"].get(self.fields["phase"], 0) + now - self.phase_started
            self.fields["seconds"][self.fields["phase"]] = round(spent, 2)
            self.phase_started = now
        self.fields.update(fields, time=time.time())
        _write_json(self.path, self.fields)
        self.last = now

    def add(self, received: int) -> None:
        self.fields["done"] = self.fields.get("done", 0) + received
        if time.monotonic() - self.last > 0.5:
            self.set()


# -- fetching ------------------------------------------------------------------

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
    _write_durably(stored, TRUSTED_ROOT.read_bytes())


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
        if isinstance(custom, dict) and custom.get("kind") in releases.KINDS:
            with contextlib.suppress(ValueError):
                releases.version_key(str(custom.get("version")))
                releases_by_arch.setdefault(custom.get("arch"), {}).setdefault(
                    custom["version"], {})[custom["kind"]] = info
    mine = releases_by_arch.get(arch)
    if not mine:
        others = ", ".join(f"{a} {max(v, key=releases.version_key)}" for a, v in releases_by_arch.items())
        raise UpdateError(f"the repository has no release for this box's architecture {arch} "
                          f"(it has: {others or 'nothing'})")
    version = max(mine, key=releases.version_key)
    if releases.version_key(version) < releases.version_key(running):
        raise UpdateError(f"refusing a downgrade: the repository's newest release is {version}, "
                          f"this box runs {running}")
    if version == running:
        raise UpdateError(f"already up to date: {running} is the newest release")
    missing = set(releases.KINDS) - set(mine[version])
    if missing:
        raise UpdateError(f"release {version} is incomplete: no {', '.join(sorted(missing))} target")
    return version, mine[version]


def _pe_arch(path: Path) -> str | None:
    with path.open("rb") as f:
        header = f.read(4096)
    if header[:2] != b"MZ" or len(header) < 0x40:
        return None
    offset = struct.unpack_from("<I", header, 0x3C)[0]
    if offset + 6 > len(header) or header[offset:offset + 4] != b"PE\0\0":
        return None
    return PE_MACHINE.get(struct.unpack_from("<H", header, offset + 4)[0], "unknown")


def _sha256_prefix(path: Path, length: int) -> str:
    """SHA-256 of the first `length` bytes as stored: cached pages are dropped first, so a partition is
    read from the disk, not from a cache that may differ from it."""
    digest, left = hashlib.sha256(), length
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while left and (chunk := f.read(min(left, 1 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    if left:
        raise UpdateError(f"{path} is shorter than {length} bytes")
    return digest.hexdigest()


# -- installing ----------------------------------------------------------------

def _sysupdate(definitions: str, version: str) -> None:
    command.run([SYSUPDATE, f"--definitions={DEFINITIONS / definitions}", "update", version])
    os.sync()  # it writes through the whole disk's page cache and does not flush; persist before checking


def _written_slot(version: str, kind: str, arch: str) -> dict | None:
    label = f"paladin_{version}" + ("_verity" if kind == "verity" else "")
    return next((s for s in slots(arch) if s["kind"] == kind and s["label"] == label), None)


def _check_slot(version: str, kind: str, info: TargetFile, arch: str) -> str | None:
    """What is wrong with the slot written for `kind`, or None when it holds exactly the signed bytes."""
    slot = _written_slot(version, kind, arch)
    if slot is None:
        return f"no {kind} partition is labelled for {version}"
    custom = info.custom["paladin"]
    uuid = info.path.rsplit("_", 1)[1].split(".")[0].replace("-", "").lower()
    if slot["uuid"] != uuid:
        return f"{slot['device']} has PARTUUID {slot['uuid']}, the release needs {uuid}"
    if _sha256_prefix(Path(slot["device"]), custom["raw_length"]) != custom["raw_sha256"]:
        return f"{slot['device']} does not hold the signed {kind} image (SHA-256 differs)"
    return None


def _empty_slot(version: str, kind: str, arch: str) -> None:
    """Relabel a partly written slot `_empty` so systemd-sysupdate writes it again."""
    slot = _written_slot(version, kind, arch)
    if slot:
        command.run(["sfdisk", "--part-label", slot["disk"], slot["number"], "_empty"])


def install(source: str, *, state: Path = STATE, reboot: bool = False) -> str:
    """Verify and install the newest release from `source` (URL, directory or bundle); returns its version."""
    progress = Progress(state, source=source, phase="metadata")
    try:
        version = _install(source, state, progress)
    except (UpdateError, releases.BundleError, command.CommandError, OSError) as err:
        progress.set(phase="failed", error=str(err))
        raise UpdateError(str(err)) from None
    progress.set(phase="installed", version=version)
    if reboot:
        progress.set(phase="rebooting")
        command.run(["systemctl", "reboot"])
    return version


def _room(arch: str, running: str) -> dict[str, int]:
    """The size of the slots an update may write: not the booted one, not the running version's."""
    free = [s for s in slots(arch) if not s["booted"] and s["version"] != running]
    return {kind: min((s["size"] for s in free if s["kind"] == kind), default=0) for kind in ("root", "verity")}


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


def verified_release(source: str, state: Path, progress: Progress, *, arch: str, running: str,
                     room: dict[str, int]) -> tuple[str, dict[str, TargetFile]]:
    """Refresh the metadata from `source`, choose the release and download its targets into the staging
    directory, each checked by python-tuf; nothing else on the box is written."""
    with _refusals(state / "staging"):
        return _verified_release(source, state, progress, arch=arch, running=running, room=room)


def _verified_release(source: str, state: Path, progress: Progress, *, arch: str, running: str,
                      room: dict[str, int]) -> tuple[str, dict[str, TargetFile]]:
    staging = state / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (state / "tmp").mkdir(exist_ok=True)
    if Path(source).is_file():
        unpacked = state / "bundle"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        progress.set(phase="unpack")
        releases.open_bundle(Path(source), unpacked)
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
    if (uki_arch := _pe_arch(uki)) != arch:
        raise UpdateError(f"release {version}'s UKI is built for {uki_arch or 'no known architecture'}, "
                          f"this box is {arch}")
    return version, chosen


def _install(source: str, state: Path, progress: Progress) -> str:
    arch, running = machine_arch(), running_version()
    version, chosen = verified_release(source, state, progress, arch=arch, running=running,
                                       room=_room(arch, running))
    progress.set(phase="write")
    _sysupdate("slot.d", version)
    progress.set(phase="verify")
    for kind in ("root", "verity"):
        if problem := _check_slot(version, kind, chosen[kind], arch):
            # A power cut during an earlier attempt can leave a labelled but partial slot: rewrite once.
            _empty_slot(version, kind, arch)
            progress.set(phase="write")
            _sysupdate("slot.d", version)
            progress.set(phase="verify")
            if problem := _check_slot(version, kind, chosen[kind], arch):
                raise UpdateError(f"the written slot failed verification: {problem}")
    progress.set(phase="uki")
    _sysupdate("uki.d", version)
    installed = [k for k in kernels() if k["version"] == version]
    if not installed or _sha256_prefix(esp() / "EFI/Linux" / installed[0]["file"],
                                       chosen["uki"].custom["paladin"]["raw_length"]) != \
            chosen["uki"].custom["paladin"]["raw_sha256"]:
        raise UpdateError(f"the UKI of {version} on the ESP does not match the signed one")
    shutil.rmtree(state / "staging", ignore_errors=True)
    return version


# -- boot assessment -------------------------------------------------------------

def _attempt(state: Path, result: str, reason: str) -> dict:
    record = {"version": running_version(), "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
              "time": time.time(), "result": result, "reason": reason, "counted": boot_counted()}
    attempts = read_state(state / "attempts.json", [])
    attempts = [a for a in attempts if a.get("boot_id") != record["boot_id"]] + [record]
    _write_json(state / "attempts.json", attempts[-KEEP_ATTEMPTS:])
    return record


def _get(url: str, timeout: float = 60) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def assess(config: config_module.Config, state: Path = STATE, deadline: float = HEALTH_DEADLINE) -> str:
    """Pass when the assistant answers /health and, with a model, generates one token; else raise."""
    host, port = config.listen_address()
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    give_up, reason = time.monotonic() + deadline, "the assistant never answered"
    while time.monotonic() < give_up:
        unit = dict(line.split("=", 1) for line in command.run(
            ["systemctl", "show", "paladin.service", "-p", "ActiveState", "-p", "Result"]).split())
        if unit.get("ActiveState") == "failed":
            reason = f"paladin.service failed (result: {unit.get('Result')})"
            break
        try:
            health = _get(f"{base}/health", timeout=10)
        except (OSError, ValueError) as err:
            reason = f"the assistant did not answer /health: {err}"
            time.sleep(2)
            continue
        if health.get("status") == "ok":
            try:
                probe = _get(f"{base}/health?probe=1")
            except (OSError, ValueError) as err:
                reason = f"one-token inference failed: {err}"
                break
            if probe.get("probe") == "ok":
                _attempt(state, "good", f"assistant answers; one-token inference took {probe['seconds']} s")
                return "good"
            reason = f"one-token inference failed: {probe}"
            break
        if health.get("status") == "no_model":
            _attempt(state, "good", "assistant answers (no model installed yet)")
            return "good"
        time.sleep(2)
    _attempt(state, "failed", reason)
    raise UpdateError(f"boot assessment failed: {reason}")


def boot_failed(state: Path = STATE) -> None:
    """After a failed or hung assessment: keep why, and reboot while systemd-boot still counts tries."""
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    attempts = read_state(state / "attempts.json", [])
    if not any(a.get("boot_id") == boot_id and a.get("result") == "failed" for a in attempts):
        _attempt(state, "failed", "boot assessment did not finish in time")
    if boot_counted():
        command.run(["systemctl", "--no-block", "reboot"])


# -- status and the request spool ----------------------------------------------------

def status(state: Path = STATE) -> dict:
    return {"running": running_version(), "arch": machine_arch(), "slots": slots(), "kernels": kernels(),
            "update": read_state(state / "status.json", {"phase": "idle"}),
            "attempts": read_state(state / "attempts.json", [])}


def save_snapshot(state: Path = STATE) -> None:
    """status() for the web UI, which may read neither the partition table nor the ESP."""
    with contextlib.suppress(UpdateError, command.CommandError, OSError):
        _write_json(state / "snapshot.json", status(state))


def take_request(inbox: Path) -> dict | None:
    """The web UI's request, removed so the path unit does not fire again. It is untrusted input."""
    path = inbox / "request.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        raw = f.read(4096)
    path.unlink()
    try:
        request = json.loads(raw)
        assert isinstance(request, dict)
    except (ValueError, AssertionError):
        raise UpdateError("the update request from the web UI is not a JSON object") from None
    return request


def run_service(config: config_module.Config, state: Path = STATE) -> None:
    """paladin-update.service: a request from the web UI, or (timer) the configured automatic update."""
    inbox = config.data_path / "update"
    request = take_request(inbox)
    if request is None:
        if not (config.update.automatic and config.update.url):
            print("automatic updates are off (update.automatic); nothing to do")
            return
        request = {"source": config.update.url, "reboot": config.update.reboot}
    source = request.get("source") or config.update.url
    if source == "bundle":
        source = str(inbox / "bundle")
    if not isinstance(source, str) or not source:
        raise UpdateError("no update source: set update.url or upload a bundle")
    try:
        install(source, state=state, reboot=bool(request.get("reboot", config.update.reboot)))
    finally:
        if source == str(inbox / "bundle"):
            with contextlib.suppress(OSError):
                os.unlink(source)
        shutil.rmtree(state / "bundle", ignore_errors=True)


def _print_status(data: dict) -> None:
    print(f"running {data['running']} ({data['arch']})")
    for slot in data["slots"]:
        mark = "booted" if slot["booted"] else ""
        print(f"  {slot['kind']:6} {slot['device']:12} {slot['label'] or '-':28} {mark}")
    for k in data["kernels"]:
        tries = "" if k["tries_left"] is None else f" (tries left {k['tries_left']}, done {k['tries_done'] or 0})"
        print(f"  uki    {k['file']:40} {k['state']}{tries}{' selected' if k['selected'] else ''}")
    update = data["update"]
    print(f"last update: {update.get('phase')} {update.get('version') or ''} {update.get('error') or ''}".rstrip())
    for attempt in data["attempts"][-3:]:
        print(f"boot of {attempt['version']}: {attempt['result']}: {attempt['reason']}")


def main(argv: list[str] | None = None) -> None:
    top = argparse.ArgumentParser(prog="paladin-update", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="action", required=True)
    show = sub.add_parser("status", help="slots, versions, which is booted and good, the last attempts")
    show.add_argument("--json", action="store_true")
    show.add_argument("--save", action="store_true", help="write it where the web UI reads it")
    add = sub.add_parser("install", help="verify and install the newest release from a URL, directory or bundle")
    add.add_argument("source")
    add.add_argument("--reboot", action="store_true", help="reboot into the new version when installed")
    sub.add_parser("run", help="paladin-update.service: handle the web UI's request or the automatic update")
    sub.add_parser("assess", help="paladin-health.service: check that this boot's assistant answers")
    sub.add_parser("boot-failed", help="record a failed assessment and reboot while tries are left")
    args = top.parse_args(argv)
    try:
        if args.action != "status":
            atexit.register(save_snapshot)  # whatever happened, the web UI sees the state it left
        if args.action == "status" and args.save:
            save_snapshot()
        elif args.action == "status":
            data = status()
            print(json.dumps(data, indent=1)) if args.json else _print_status(data)
        elif args.action == "install":
            print(f"installed {install(args.source, reboot=args.reboot)}")
        elif args.action == "run":
            run_service(config_module.load())
        elif args.action == "assess":
            try:
                config = config_module.load()
            except config_module.ConfigError as err:
                _attempt(STATE, "failed", f"the configuration is invalid: {err}")
                raise
            print(f"boot assessment: {assess(config)}")
        else:
            boot_failed()  # needs no configuration: it must work when the configuration is what broke
    except (UpdateError, config_module.ConfigError, command.CommandError, OSError) as err:
        print(f"paladin-update: {err}", file=sys.stderr)
        raise SystemExit(1) from None
