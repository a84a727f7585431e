"""The image the image tests share, booted once on a test LAN: fixtures for tests/test_image.py and
tests/test_image_network.py (loaded by conftest.py), so one build and one boot serve every check."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from buildhost import ROOT
from lan import OUTSIDE_GATEWAY, Lan
from vm import VM
from wizard import PASSWORD

VERSION = "1"
GROW_BY = 2 << 30
LAPTOP = "10.77.7.10/24"  # a host on the box's LAN (tests/lan.py)
OUTSIDER = "198.51.100.10/24"  # a host beyond a router, outside every LAN range (tests/lan.py OUTSIDE)
UNITS = sorted(p.name for p in (ROOT / "units").glob("*.service"))

# Injected as systemd credentials, so the product image carries no test code: once the assistant and the
# token unit (buildhost.qemu.TOKEN_UNIT) are done, a script reports from inside the box, one
# "PALADIN-CHECK key value" line each: which host-only modules its venv can import (none may), the console
# notice, network time, failed units, the size of /var, and the hardening (exposure of every shipped
# unit as systemd-analyze reads it there, kernel settings, the root account, the journal, UDP listeners,
# SSH, the firewall, the governor).
HOST_ONLY = ("buildhost", "buildhost.release", "buildhost.tinymodel", "appliance.release", "appliance.tinymodel")
CHECK_SCRIPT = f"""\
check() {{ echo "PALADIN-CHECK $*"; }}
check host_code $(/usr/lib/paladin/bin/python -c 'import importlib.util as u, sys
print(*[m for m in sys.argv[1:] if u.find_spec(m.split(".")[0]) and u.find_spec(m)])' {" ".join(HOST_ONLY)})
check issue $(grep -c "Setup code: ...." /etc/issue.d/50-paladin.issue)
check timesync $(systemctl is-active systemd-timesyncd)
for unit in {" ".join(UNITS)}; do
    check "exposure:$unit" $(systemd-analyze security --no-pager "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \\([0-9.]*\\).*/\\1/p')
done
for key in kernel.kptr_restrict kernel.dmesg_restrict kernel.unprivileged_bpf_disabled fs.protected_symlinks \\
           fs.protected_hardlinks net.ipv4.conf.all.accept_redirects net.ipv6.conf.all.accept_redirects \\
           net.ipv4.conf.all.send_redirects net.ipv4.conf.all.accept_source_route net.ipv4.tcp_syncookies; do
    check "sysctl:$key" $(sysctl -n "$key")
done
check rp_filter $(cat /proc/sys/net/ipv4/conf/*/rp_filter | sort -u | tr '\\n' ' ')
check root $(passwd --status root | cut -d' ' -f2)
check passwords $(awk -F: '$2 !~ /^[!*]/' /etc/shadow | wc -l)
check journal $(test -d /var/log/journal && journalctl --header 2>/dev/null | grep -c '^File path: /var/log/journal')
# UDP sockets bound and unconnected (state 07), by local port
check udp_listeners $(for port in $(awk '$4 == "07" {{split($2, a, ":"); print a[2]}}' /proc/net/udp /proc/net/udp6); do
    printf '%d\\n' "0x$port"; done | sort -nu | tr '\\n' ' ')
check ssh $(systemctl is-active ssh.service) $(ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l) \\
    $(stat -c %a /var/lib/paladin-firewall/ssh/ssh_host_ed25519_key)
check firewall $(systemctl is-active paladin-firewall.service) $(nft list chain inet paladin input | grep -c 'policy drop')
check governor $(systemctl is-active paladin-governor.service) $(systemctl show -p User --value paladin-governor) \
    $(stat -c '%U %a' /var/lib/paladin-governor /run/paladin-governor/socket | tr '\n' ' ')
check failed $(systemctl --failed --no-legend --plain | cut -d' ' -f1 | tr '\\n' ' ')
check var_bytes $(findmnt -bno SIZE /var)
# An error the owner's System page must show (tests/test_image.py): the journal read from the sandbox.
echo "a test error for the System page" | systemd-cat --priority=err --identifier=paladin-check
check done
"""
CHECK_UNIT = """\
[Unit]
After=paladin.service paladin-token.service

[Service]
Type=oneshot
StandardOutput=journal+console
ImportCredential=paladin-check.sh
ExecStart=/bin/sh ${CREDENTIALS_DIRECTORY}/paladin-check.sh
"""


@pytest.fixture(scope="session")
def image(build_image) -> dict:
    report = build_image(VERSION)
    print(f"\nimage: {report['raw_bytes'] / 2**20:.0f} MiB raw, {report['compressed_bytes'] / 2**20:.0f} MiB zstd, "
          f"mkosi build {report['build_seconds']} s")
    return report


@pytest.fixture(scope="session")
def lan(tmp_path_factory):
    """A LAN of network namespaces for the box's second NIC (tests/lan.py); gone after the session."""
    with Lan(tmp_path_factory.mktemp("lan")) as made:
        yield made


@pytest.fixture(scope="session")
def box(image, lan, tmp_path_factory):
    """The image booted once (on a copy grown by 2 GiB, as a bigger USB stick would be), on `lan` too."""
    vm = VM(Path(image["image"]), tmp_path_factory.mktemp("boot"), GROW_BY,
            {"paladin-check.service": CHECK_UNIT, "paladin-check.sh": CHECK_SCRIPT}, lan=lan)
    started = time.monotonic()
    vm.start()
    try:
        health = vm.wait_health()
        boot_seconds = time.monotonic() - started
        vm.printed(r"PALADIN-CHECK (done)", "the in-box checks", timeout=1200)
        checks = {key: value.strip() for key, value in
                  re.findall(r"PALADIN-CHECK (\S+)(.*?)\r?$", vm.console(), re.M)} | {"token": vm.token()}
        print(f"\nboot to /health 200: {boot_seconds:.0f} s under TCG")
        yield {"url": vm.url, "health": health, "boot_seconds": boot_seconds, "checks": checks, "vm": vm,
               "started": started}
    finally:
        vm.close()


@pytest.fixture(scope="session")
def laptop(lan) -> str:
    """A host on the box's LAN (its network namespace)."""
    return lan.add_host("laptop", LAPTOP)


@pytest.fixture(scope="session")
def outsider(lan) -> str:
    """A host outside the LAN's ranges that can still route to the box (its network namespace)."""
    return lan.add_host("outsider", OUTSIDER, gateway=OUTSIDE_GATEWAY)


def owner_client(vm: VM) -> httpx.Client:
    """The owner logged in over HTTPS (the box's own certificate), as the in-image wizard made them; its
    CSRF token in the client's headers."""
    client = httpx.Client(base_url=vm.https_url, verify=False, timeout=120, follow_redirects=True)
    page = client.post("/login", data={"name": "Ada", "password": PASSWORD, "next": "/access"})
    assert page.status_code == 200 and page.url.path == "/access", f"the owner cannot log in: {page.status_code}"
    client.headers["X-CSRF-Token"] = re.search(r'name="csrf" content="([^"]+)"', page.text).group(1)
    return client
