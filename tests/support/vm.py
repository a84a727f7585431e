"""A disk image booted in qemu (TCG) for the image and update tests: start, wait, talk, power-cut."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from appliance import facts
from buildhost import ROOT
from buildhost.qemu import ensure_qemu, free_ports, image_arch, qemu_argv
from tests.support.lan import Lan

BOOT_TIMEOUT = 900
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Two guests at once keep 2 host cores busy; a third starves the others' vCPU threads under TCG until a
# guest kernel stalls at boot (RCU stalls, seen with three): a box waits for its turn (VM below).
GUEST_SLOTS = threading.BoundedSemaphore(2)
SLOT_TIMEOUT = 3600
# The updater and the boot assessment say what they do on the console, so a failing test shows it.
CONSOLE_DROPINS = {f"{unit}/console.conf": "[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n"
                   for unit in ("paladin-update.service", "paladin-update-fetch.service", "paladin-health.service",
                                "paladin-boot-failed.service")}


def run_build(*argv) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"{' '.join(map(str, argv[:3]))} failed:\n{done.stderr[-5000:]}")
    return done.stdout


def build_image(version: str, out: Path, model: Path, keys: Path, tree: Path = ROOT,
                extra_tree: Path | None = None, compress: bool = False) -> dict:
    """`build.py image` (of `tree`, a checkout) for x86-64; its JSON report.  Compressed for flashing only
    when asked: the tests boot and release the raw image, and only one test weighs the .zst."""
    report = run_build(tree / "build.py", "image", "--arch", "x86-64", "--version", version, "--model", model,
                       "--keys", keys, "--out", out, "--json", *(["--extra-tree", extra_tree] if extra_tree else []),
                       *([] if compress else ["--no-compress"]))
    return json.loads(report.strip().splitlines()[-1])


def release(image: dict, repo: Path, keys: Path) -> None:
    run_build(ROOT / "build.py", "release", "--image", image["image"], "--repo", repo, "--keys", keys)


class BootFailed(AssertionError):
    pass


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time of a running process, all its threads (a TCG vCPU each) included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


GUESTS: list[VM] = []  # every box this process made, for the session's account of their lives (tests/conftest.py)


class VM:
    """One disk, booted as often as a test needs; each boot's serial console goes to its own file.  A box
    holds one of the two guest slots from its making to its close: a third waits (GUEST_SLOTS).

    The box's ports are on 127.0.0.1: `url` (the assistant's plain API), `https_url` and `redirect_url`
    (port 80).  With a `lan`, the box has a second NIC on that LAN (tests/support/lan.py).  `cpus` is
    qemu's -smp (docs/benchmarks.md: two pay off under TCG, even for two boxes at once on 2 cores);
    `accel` is for the benchmark that weighs TCG's threading (buildhost.qemu.qemu_argv); `devices` are more
    of qemu's arguments (USB sticks: tests/support/sticks.py).
    """

    def __init__(self, image: Path, work: Path, grow_by: int = 2 << 30, units: dict[str, str] | None = None,
                 lan: Lan | None = None, cpus: int = 2, accel: str | None = None, devices: tuple[str, ...] = ()):
        work.mkdir(parents=True, exist_ok=True)
        self.arch = image_arch(image)
        ensure_qemu(self.arch)  # qemu and the UEFI firmware of the image's architecture
        self.work, self.disk, self.lan = work, work / "disk.raw", lan
        subprocess.run(["cp", "--sparse=always", image, self.disk], check=True)
        with self.disk.open("r+b") as f:
            f.truncate(self.disk.stat().st_size + grow_by)
        # After the disk (a full one fails the copy, and must not hold a slot), before the ports (held
        # from their choice to the boot, not through a wait).
        if not GUEST_SLOTS.acquire(timeout=SLOT_TIMEOUT):
            raise BootFailed(f"no guest slot came free in {SLOT_TIMEOUT} s (two boxes hold them)")
        # A scenario's thread and the session's end may both kill or close a box.
        self.slot, self._closing = True, threading.RLock()
        self.units = CONSOLE_DROPINS | (units or {})
        web, https, redirect = free_ports(3)
        self.forwards = {facts.WEB_PORT: web, facts.HTTPS_PORT: https, facts.REDIRECT_PORT: redirect}
        self.url = f"http://127.0.0.1:{web}"
        self.https_url = f"https://127.0.0.1:{https}"
        self.redirect_url = f"http://127.0.0.1:{redirect}"
        self.cpus, self.accel, self.devices = cpus, accel, devices
        self.qemu: subprocess.Popen | None = None
        self.qmp = work / "qmp.sock"
        self.boots, self.closed = 0, False
        self.carried: tuple[int, str] | None = None  # (boot, API token): carry_token
        self.lives: list[tuple[float, float, float]] = []  # per qemu run: started, killed (monotonic), CPU seconds
        self.serial = work / "serial-0.log"
        GUESTS.append(self)

    def start(self) -> None:
        if self.closed:  # by another thread: the session is ending (tests/image/updates/boxes.py)
            raise BootFailed("this box was shut down for good")
        self.boots += 1
        self.serial = self.work / f"serial-{self.boots}.log"
        argv = qemu_argv(self.disk, self.arch, self.forwards, self.work / "efivars.fd", self.units, serial=self.serial,
                         cpus=self.cpus, accel=self.accel) + list(self.devices) + [
            "-qmp", f"unix:{self.qmp},server=on,wait=off"]
        tap: tuple[int, ...] = ()
        if self.lan:
            argv, tap = argv + self.lan.qemu_args(), (self.lan.tap,)
        for netdev in self.netdevs:  # everything the box sends and receives, per NIC, as pcap (tests/support/capture.py)
            argv += ["-object", f"filter-dump,id=dump-{netdev},netdev={netdev},file={self.capture(netdev)}"]
        self.qemu = subprocess.Popen(argv, pass_fds=tap, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started = time.monotonic()

    @property
    def netdevs(self) -> tuple[str, ...]:
        """qemu's names of the box's NICs: its user-mode one (the way out, the host's forwards), the LAN's."""
        return ("net0", "lan") if self.lan else ("net0",)

    def capture(self, netdev: str) -> Path:
        """This boot's packet capture of the NIC `netdev`."""
        return self.work / f"{netdev}-{self.boots}.pcap"

    def kill(self) -> None:
        """A power cut: qemu dies at once, nothing is flushed or shut down."""
        with self._closing:  # one kill per life, counted once
            if self.qemu and self.qemu.poll() is None:
                cpu = cpu_seconds(self.qemu.pid)
                self.qemu.kill()
                self.qemu.wait()
                self.lives.append((self.started, time.monotonic(), cpu))

    def monitor(self, execute: str, **arguments) -> dict | list:
        """qemu's answer to one command of its machine protocol (QMP) on this boot's socket: what a person does
        to the hardware (pulling a USB stick) and what the hardware did (bytes written to a disk)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(self.qmp))
            stream = sock.makefile("rwb")
            json.loads(stream.readline())  # qemu's greeting
            for command in ({"execute": "qmp_capabilities"}, {"execute": execute, "arguments": arguments}):
                stream.write(json.dumps(command).encode() + b"\n")
                stream.flush()
                while "event" in (said := json.loads(stream.readline())):
                    pass
                if "error" in said:
                    raise AssertionError(f"qemu refused {command}: {said['error']}")
            return said["return"]

    def console(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def fail(self, why: str) -> None:
        raise BootFailed(f"{why}\n--- serial console (boot {self.boots}) ---\n{self.console()[-8000:]}")

    def wait_health(self, timeout: float = BOOT_TIMEOUT, version: str | None = None) -> dict:
        """Wait for /health 200 (from `version`, if given) and return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.qemu.poll() is not None:
                self.fail(f"qemu exited with {self.qemu.returncode}: {self.qemu.stderr.read().decode()}")
            if re.search(r"Kernel panic|emergency mode", self.console()):
                self.fail("the box failed to boot")
            try:
                health = httpx.get(self.url + "/health", timeout=5)
                if health.status_code == 200 and (version is None or health.json().get("version") == version):
                    return health.json()
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.fail(f"no /health 200{f' from version {version}' if version else ''} after {timeout:.0f} s")

    def printed(self, pattern: str, what: str, timeout: float = 300) -> str:
        """The last match of `pattern`'s group on this boot's console, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.findall(pattern, self.console()):
                return found[-1]
            time.sleep(1)
        self.fail(f"no {what} on the console after {timeout:.0f} s")

    def token(self) -> str:
        """The API token the credential unit printed on this boot's console (buildhost.qemu.TOKEN_UNIT), or
        the one carried over to this boot."""
        if self.carried and self.carried[0] == self.boots:
            return self.carried[1]
        return self.printed(r"PALADIN-TOKEN (pal_\S+)", "API token")

    def carry_token(self, token: str) -> None:
        """Use `token` until the next boot: a restore replaced the database the console's token was made in
        (the credential unit makes a new one at each boot)."""
        self.carried = (self.boots, token)

    def setup_code(self) -> str:
        """The setup code the first-boot unit printed on this boot's console (`Setup code: 7K4M-PQ9X-2HDT`)."""
        return self.printed(r"Setup code: (\S+)", "setup code")

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.token()}"})

    def close(self) -> None:
        self.closed = True
        with self._closing:
            self.kill()
            if self.slot:
                self.slot = False
                GUEST_SLOTS.release()


# -- what the update tests and the power-cut run do to a box ---------------------------------

TERMINAL = ("failed", "installed", "rebooting")


def partitions(disk: Path) -> list[dict]:
    table = json.loads(subprocess.run(["sfdisk", "--json", disk], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    return [p | {"offset": p["start"] * table.get("sectorsize", 512), "bytes": p["size"] * table.get("sectorsize", 512)}
            for p in table["partitions"]]


def partition_digest(disk: Path, number: int, length: int | None = None) -> str:
    """SHA-256 of partition `number` of `disk`, or of its first `length` bytes."""
    part = partitions(disk)[number - 1]
    digest, left = hashlib.sha256(), part["bytes"] if length is None else length
    with disk.open("rb") as f:
        f.seek(part["offset"])
        while left:
            chunk = f.read(min(left, 1 << 22))
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def fat(disk: Path, number: int | None = None, label: str | None = None) -> str:
    """mtools' name of a FAT partition of the disk, by number or GPT label."""
    part = next(p for i, p in enumerate(partitions(disk), 1) if i == number or p.get("name") == label)
    return f"{disk}@@{part['offset']}"


def fat_files(drive: str, folder: str = "::/") -> list[str]:
    """The names in a folder of a FAT on the host (`drive`: mtools' name, fat(); qemu need not run, and may)."""
    out = subprocess.run(["mdir", "-b", "-i", drive, folder], capture_output=True, text=True, check=True).stdout
    return sorted(Path(line.strip()).name for line in out.splitlines() if line.strip())


def fat_read(drive: str, name: str) -> bytes:
    """One file of a FAT on the host, its bytes as they are (`drive`: mtools' name, fat())."""
    return subprocess.run(["mtype", "-i", drive, f"::/{name}"], capture_output=True, check=True).stdout


def fat_write(drive: str, name: str, data: bytes) -> None:
    """Write one file of a FAT on the host, replacing it if it is there."""
    subprocess.run(["mcopy", "-o", "-i", drive, "-", f"::/{name}"], input=data, check=True)


def esp_kernels(disk: Path) -> list[str]:
    """The UKI file names on the disk's ESP."""
    return [name for name in fat_files(fat(disk, number=1), "::/EFI/Linux") if name.endswith(".efi")]


def card(disk: Path) -> str:
    """mtools' name of the disk's PALADIN drive (docs/first-boot.md)."""
    return fat(disk, label=facts.CARD_LABEL)


def write_card_code(disk: Path, code: str) -> None:
    """What an owner without a screen does after flashing: a setup code of their own on the PALADIN drive."""
    fat_write(card(disk), facts.CARD_CODE, code.encode())


def update_status(client: httpx.Client) -> dict:
    return client.get("/update").raise_for_status().json()


def wait_update(client: httpx.Client, since: float, phases=TERMINAL, timeout: float = 1800,
                poll: float = 0.3) -> dict:
    """The updater's status once an attempt that started after `since` reaches one of `phases`."""
    deadline, status = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            status = update_status(client)
        except httpx.HTTPError:
            time.sleep(poll)
            continue
        update = status["update"]
        if update.get("time", 0) > since and not status["pending"]:
            if update.get("phase") in phases:
                return status
            if update.get("phase") == "failed":
                raise AssertionError(f"the update failed instead of reaching {phases}: {update.get('error')}")
        time.sleep(poll)
    raise AssertionError(f"the update did not reach {phases} in {timeout} s: {status}")


def wait_blessed(vm: VM, version: str, timeout: float = 600) -> dict:
    """The status once `version` booted, passed its assessment and systemd-bless-boot marked it good."""
    deadline = time.monotonic() + timeout
    with vm.client() as client:
        while time.monotonic() < deadline:
            status = update_status(client)
            if any(k["version"] == version and k["state"] == "good" for k in status.get("kernels", [])) and \
                    status["running"] == version:
                return status
            time.sleep(3)
    raise AssertionError(f"{version} was not marked good: {status}")


def box_time(client: httpx.Client) -> float:
    """The box's clock, from its status (the host's and the guest's clocks need not agree)."""
    return update_status(client)["update"].get("time", 0)


def request_update(client: httpx.Client, url: str, reboot: bool) -> float:
    """Point the owner's update settings at the repository `url`, then ask for an online update."""
    since = box_time(client)
    client.put("/update/settings", json={"url": url}).raise_for_status()
    client.post("/update", json={"source": "online", "reboot": reboot}).raise_for_status()
    return since


def upload_bundle(client: httpx.Client, bundle: Path, reboot: bool) -> float:
    since = box_time(client)
    with bundle.open("rb") as f:
        client.put(f"/update/bundle?reboot={'true' if reboot else 'false'}", content=f,
                   timeout=900).raise_for_status()
    return since


def write_conversation(client: httpx.Client) -> str:
    conversation = client.post("/conversations", json={"title": "before the update"}).raise_for_status().json()
    with client.stream("POST", f"/conversations/{conversation['id']}/messages",
                       json={"content": "remember the number 42"}) as reply:
        reply.read()
    return conversation["id"]


def conversation_intact(client: httpx.Client, conversation: str) -> bool:
    found = client.get(f"/conversations/{conversation}")
    return found.status_code == 200 and found.json()["messages"][0]["content"] == "remember the number 42"


# Where a power cut is tried, and how far into the phase (seconds, uniformly at random).
PHASES = {"download": 1.0, "write": 5.0, "uki": 0.5, "first boot": 35.0}


def wait_down(vm: VM, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(vm.url + "/health", timeout=2)
            time.sleep(0.5)
        except httpx.HTTPError:
            return


def cut_power(vm: VM, bundle: Path, phase: str, rng) -> str:
    """On the running box, install `bundle` and cut the power at a random moment in `phase`."""
    with vm.client() as client:
        wait_update(client, upload_bundle(client, bundle, reboot=False), phases=(phase,), poll=0.2)
    delay = rng.uniform(0, PHASES[phase])
    time.sleep(delay)
    vm.kill()
    return f"{phase} +{delay:.1f} s"


def cut_first_boot(vm: VM, bundle: Path, rng) -> str:
    """With the box off: cut the power during the first boot of the bundle's version.  If its UKI is
    already on the ESP, untried (an earlier cut came after the install), that is the next boot;
    otherwise the box boots and installs the bundle with a reboot first."""
    untried = f"{facts.uki_name(bundle.name.split('_')[1])}+3.efi"
    vm.start()
    if untried not in esp_kernels(vm.disk):
        vm.wait_health()
        with vm.client() as client:
            wait_update(client, upload_bundle(client, bundle, reboot=True), phases=("rebooting", "installed"))
        wait_down(vm)
    delay = 5 + rng.uniform(0, PHASES["first boot"])
    time.sleep(delay)
    vm.kill()
    return f"first boot +{delay:.1f} s"
