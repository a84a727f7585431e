"""Booting an image in qemu on the build host: TCG (this host's KVM cannot run guests), UEFI firmware
from Debian's packages, the box's ports forwarded to 127.0.0.1, and units passed in as systemd
credentials."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
from pathlib import Path

from appliance import facts

from .debian import ensure_host_packages
from .steps import StepError, say, step

# An x86-64 guest's kernel patches its own code while running (static keys, text_poke_bp's int3);
# with one host thread per vCPU (MTTCG) a vCPU can still run the int3 after the patch is done, and
# the kernel panics ("Oops: int3": twice in about a hundred test boots, in
# sched_clock_idle_wakeup_event and __netif_receive_skb_core).  One thread for all vCPUs has no such
# window; two guests at once boot no slower with it (docs/benchmarks.md).  arm64 patches under
# stop_machine and keeps a thread per vCPU.
QEMU = {
    "x86-64": {"qemu": "qemu-system-x86_64", "args": ["-machine", "q35", "-cpu", "max"],
               "accel": "tcg,thread=single",
               "firmware": ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
               "packages": ["qemu-system-x86", "ovmf"]},
    "arm64": {"qemu": "qemu-system-aarch64", "args": ["-machine", "virt", "-cpu", "max"],
              "accel": "tcg",
              "firmware": ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
              "packages": ["qemu-system-arm", "qemu-efi-aarch64", "qemu-user-static"]},
}
# What the image tests' LAN of network namespaces needs (tests/support/lan.py): ip, and dnsmasq without its service.
# The box's user-mode NIC (its way out, and the host's port forwards): qemu's default address, named.
USER_NIC_MAC = "52:54:00:12:34:56"
# The test LAN (tests/support/lan.py) and what its hosts look at the box with.
LAN_PACKAGES = ["iproute2", "dnsmasq-base", "nmap", "openssh-client", "procps", "iputils-ping"]

# The box has no shell login and no token until its owner makes one.  For a VM, the host is the
# owner: a unit passed in as a systemd credential (SMBIOS) makes an API token once the assistant
# is up and prints it on the serial console.  Nothing of this is in the image.
TOKEN_UNIT = """\
[Unit]
After=paladin.service

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo "PALADIN-TOKEN $(runuser -u paladin -- paladin token create --name qemu | tail -n1)"'
"""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (held open together, so the kernel cannot hand one out twice)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


UNIT_SUFFIXES = (".service", ".path", ".timer", ".socket")


def credential_units(units: dict[str, str]) -> list[str]:
    """qemu arguments that pass {name: text} to the guest's systemd as credentials: a unit ("x.service")
    is installed and started, a drop-in ("x.service/name") is added to that unit, anything else ("x.sh")
    is a plain system credential a unit can import (ImportCredential=)."""
    args, wants = [], []
    for name, text in units.items():
        unit, _, dropin = name.partition("/")
        credential = (f"systemd.unit-dropin.{unit}~{dropin}" if dropin else f"systemd.extra-unit.{unit}"
                      if unit.endswith(UNIT_SUFFIXES) else name)
        encoded = base64.b64encode(text.encode()).decode()
        args += ["-smbios", f"type=11,value=io.systemd.credential.binary:{credential}={encoded}"]
        wants += [f"systemd.wants={unit}"] if unit.endswith(UNIT_SUFFIXES) and not dropin else []
    return args + ["-smbios", f"type=11,value=io.systemd.stub.kernel-cmdline-extra={' '.join(wants)}"]


def image_arch(image: Path) -> str:
    """The architecture an image was built for, from its name (paladin_VERSION_ARCH.raw)."""
    return next((arch for arch in facts.ARCHES if image.stem.endswith(f"_{arch}")), "x86-64")


def ensure_qemu(arch: str) -> None:
    """qemu and the UEFI firmware for `arch`, from Debian's packages."""
    ensure_host_packages(QEMU[arch]["packages"])


def qemu_argv(image: Path, arch: str, forwards: dict[int, int], vars_copy: Path, units: dict[str, str] | None = None,
              serial: Path | None = None, cpus: int = 2, accel: str | None = None) -> list[str]:
    """qemu for `image` under TCG, UEFI, each of the box's ports in `forwards` ({box: host}) on 127.0.0.1:host.

    `units` are started in the guest beside the one that prints an API token; the serial console goes
    to the terminal, or to the file `serial`.  Two vCPUs (`cpus`) boot a box in half the time of one, with
    less CPU in all; `accel` replaces the architecture's TCG threading for a benchmark (docs/benchmarks.md).
    """
    spec = QEMU[arch]
    code, variables = spec["firmware"]
    if not vars_copy.exists():
        shutil.copy(variables, vars_copy)
    console = ["-nographic"] if serial is None else ["-display", "none", "-serial", f"file:{serial}"]
    return [spec["qemu"], *spec["args"], "-accel", accel or spec["accel"], "-smp", str(cpus), "-m", "2048", *console,
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"if=virtio,format=raw,file={image}",
            "-netdev", ",".join(["user,id=net0", *(f"hostfwd=tcp:127.0.0.1:{host}-:{box}"
                                                   for box, host in forwards.items())]),
            "-device", f"virtio-net-pci,netdev=net0,mac={USER_NIC_MAC}",
            *credential_units({"paladin-token.service": TOKEN_UNIT} | (units or {}))]


def boot(image: Path, arch: str, port: int) -> int:
    if not image.is_file():
        raise StepError(f"image {image} does not exist", "build one with ./build.py image (or ./build.py demo)")
    with step("host packages"):
        ensure_qemu(arch)
    https, redirect = free_ports(2)
    say(f"booting {image.name} under emulation (TCG: a minute or more). Then open https://127.0.0.1:{https}/ "
        "(the box's own certificate: its SHA-256 is on the console) and type the 'Setup code' the console "
        f"shows; the API answers at http://127.0.0.1:{port}/ too, and the console prints an API token for it "
        "('PALADIN-TOKEN pal_...'). Quit qemu with Ctrl-a x.")
    forwards = {facts.WEB_PORT: port, facts.HTTPS_PORT: https, facts.REDIRECT_PORT: redirect}
    return subprocess.run(qemu_argv(image, arch, forwards, image.with_suffix(".efivars"))).returncode
