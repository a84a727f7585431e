"""A LAN made of network namespaces for the image tests: the booted box's second NIC on a bridge with a
DHCP server, and hosts beside it that reach the box as a laptop on the owner's network would.

    netns paladin-PID-lan    br0 10.77.7.1/24 with dnsmasq (DHCP, router advertisements) on it; tap0, the box's NIC, in br0
    netns paladin-PID-NAME   eth0 with the address add_host() gives it; its veth peer NAME in br0

Router advertisements on br0 give the box a global IPv6 address from a home's ISP prefix (ISP_PREFIX), as
a home with IPv6 does.  The LAN's namespace also routes to one network that is not the LAN (OUTSIDE, a
documentation range):
br0 carries its gateway address too, and DHCP gives the box a route to it (option 121), so a host there
reaches the box as a stranger beyond a router would, and the box's answers find their way back.

Every link and address lives in namespaces made here and named after this process, and they are gone
after close(): nothing touches the host's own network.  A host on the bridge may have an address outside
the LAN's subnet: same wire, another network, as a firewall test needs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from buildhost.debian import ensure_host_packages
from buildhost.qemu import LAN_PACKAGES

SERVER = "10.77.7.1/24"
DHCP_RANGE = "10.77.7.100,10.77.7.199,10m"
# The box's NIC has a fixed MAC and dnsmasq a fixed lease for it, so a test knows the address DHCP gave.
BOX_MAC = "52:54:00:4c:41:4e"
BOX_ADDRESS = "10.77.7.50"
OUTSIDE = "198.51.100.0/24"  # TEST-NET-2: never an address anyone owns
OUTSIDE_GATEWAY = "198.51.100.1"
# The home's ISP IPv6 prefix (a documentation one): announced on the LAN, so the box takes a global
# address from it by SLAAC, as it would at home; outside every LAN range of the firewall.
ISP_PREFIX = "2001:db8:77::"
MDNS_PROBE = Path(__file__).with_name("mdns_probe.py")

# qemu runs in the host's namespace (its user-mode NIC forwards the box's ports to the host's 127.0.0.1),
# but a tap is looked up by name in the namespace of whoever opens it: a process inside the LAN's opens
# it and hands the open file back over a Unix socket.  The tap lives as long as that file is open.
TAP_OPENER = """\
import fcntl, os, socket, struct, sys
tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, 0x400454CA, struct.pack("16sH22x", b"tap0", 0x0002 | 0x1000))  # TUNSETIFF, IFF_TAP | IFF_NO_PI
socket.send_fds(socket.socket(fileno=int(sys.argv[1])), [b"tap"], [tap])
"""


def run_in(netns: str, argv: list, timeout: float = 60, pass_fds: tuple[int, ...] = ()) -> str:
    """`argv` inside the network namespace `netns`; its standard output."""
    argv = ["ip", "netns", "exec", netns, *map(str, argv)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, pass_fds=pass_fds)
    if done.returncode:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


class Lan:
    """The namespaces, bridge, tap and DHCP server of one test LAN; a context manager that removes them."""

    def __init__(self, work: Path):
        ensure_host_packages(LAN_PACKAGES)
        work.mkdir(parents=True, exist_ok=True)
        self.work, self.prefix = work, f"paladin-{os.getpid()}"
        self.netns = f"{self.prefix}-lan"
        self.namespaces: list[str] = []
        self.hosts: dict[str, str] = {}  # netns: its address
        self.dnsmasq: subprocess.Popen | None = None
        self.tap: int | None = None
        self.log = work / "dnsmasq.log"

    def __enter__(self) -> Lan:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *failure) -> None:
        self.close()

    def _build(self) -> None:
        self._add_netns(self.netns)
        for command in (["link", "add", "br0", "type", "bridge"], ["addr", "add", SERVER, "dev", "br0"],
                        ["addr", "add", f"{OUTSIDE_GATEWAY}/24", "dev", "br0"],
                        ["addr", "add", f"{ISP_PREFIX}1/64", "dev", "br0"], ["link", "set", "br0", "up"]):
            run_in(self.netns, ["ip", *command])
        run_in(self.netns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        parent, child = socket.socketpair()
        with parent, child:
            run_in(self.netns, [sys.executable, "-c", TAP_OPENER, child.fileno()], pass_fds=(child.fileno(),))
            self.tap = socket.recv_fds(parent, 16, 1)[1][0]
        run_in(self.netns, ["ip", "link", "set", "tap0", "master", "br0", "up"])
        with self.log.open("w") as log:
            self.dnsmasq = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                 "--port=0", "--interface=br0", "--bind-interfaces", f"--dhcp-range={DHCP_RANGE}",
                 f"--dhcp-host={BOX_MAC},{BOX_ADDRESS}", "--dhcp-authoritative",
                 # No router and no DNS server: the box's way out stays qemu's user-mode NIC.
                 "--dhcp-option=option:router", "--dhcp-option=option:dns-server",
                 f"--dhcp-option=option:classless-static-route,{OUTSIDE},{SERVER.partition('/')[0]}",
                 # Router advertisements of the ISP prefix, for addresses only: no default route, no DNS.
                 "--enable-ra", f"--dhcp-range={ISP_PREFIX},ra-only,64", "--ra-param=br0,60,0",
                 "--dhcp-option=option6:dns-server",
                 f"--dhcp-leasefile={self.work / 'dnsmasq.leases'}", f"--pid-file={self.work / 'dnsmasq.pid'}",
                 "--log-facility=-", "--log-dhcp"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "DHCP, IP range" not in self.dhcp_log():
            if self.dnsmasq.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq did not start on the test LAN:\n{self.dhcp_log()}")
            time.sleep(0.1)

    def _add_netns(self, netns: str) -> None:
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        self.namespaces.append(netns)
        run_in(netns, ["ip", "link", "set", "lo", "up"])

    def add_host(self, name: str, address: str, gateway: str | None = None) -> str:
        """A host on the bridge in its own namespace, with `address` (CIDR) on its eth0 (and a default route via
        `gateway`); its namespace's name."""
        netns = f"{self.prefix}-{name}"
        self._add_netns(netns)
        run_in(self.netns, ["ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run_in(self.netns, ["ip", "link", "set", name, "master", "br0", "up"])
        run_in(netns, ["ip", "addr", "add", address, "dev", "eth0"])
        run_in(netns, ["ip", "link", "set", "eth0", "up"])
        if gateway:
            run_in(netns, ["ip", "route", "add", "default", "via", gateway])
        self.hosts[netns] = address.partition("/")[0]
        return netns

    def qemu_args(self) -> list[str]:
        """The box's NIC on this LAN; qemu must inherit the tap (pass_fds=[lan.tap])."""
        return ["-netdev", f"tap,id=lan,fd={self.tap}", "-device", f"virtio-net-pci,netdev=lan,mac={BOX_MAC}"]

    def mdns(self, netns: str, name: str, service_type: str, seconds: float = 120) -> dict:
        """What the host `netns` sees over mDNS within `seconds`: `name`'s IPv4 addresses, every service type
        announced on the LAN, and the instances of `service_type` with their IPv4 addresses (tests/support/mdns_probe.py,
        run there)."""
        out = run_in(netns, [sys.executable, MDNS_PROBE, self.hosts[netns], name, service_type, seconds],
                     timeout=seconds + 60)
        return json.loads(out)

    def dhcp_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.dnsmasq and self.dnsmasq.poll() is None:
            self.dnsmasq.terminate()
            try:
                self.dnsmasq.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait()
        if self.tap is not None:
            os.close(self.tap)
            self.tap = None
        while self.namespaces:
            subprocess.run(["ip", "netns", "del", self.namespaces.pop()], capture_output=True)
