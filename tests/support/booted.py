"""What the image tests' shared box is (tests/image/box/): its version, the disk it boots from, the hosts
around it on the test LAN, the in-box checks passed to it as credentials, and the owner's client."""

from __future__ import annotations

import re

import httpx

from buildhost import ROOT
from tests.support.vm import VM
from tests.support.wizard import PASSWORD, csrf_of, walk

VERSION = "1"
GROW_BY = 2 << 30
LAPTOP = "10.77.7.10/24"  # a host on the box's LAN (tests/support/lan.py)
OUTSIDER = "198.51.100.10/24"  # a host beyond a router, outside every LAN range (tests/support/lan.py OUTSIDE)
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
# An error the owner's System page must show (tests/image/box/test_image.py): the journal read from the sandbox.
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

def set_up(vm: VM, code: str | None = None) -> None:
    """The box made Ada's through the wizard's forms over HTTPS, serving the model it serves already; with the
    setup code from its console, or `code`."""
    with vm.client() as api:
        model = next(m["name"] for m in api.get("/models").raise_for_status().json()["models"] if m["served"])
    with httpx.Client(base_url=vm.https_url, verify=False, timeout=120, follow_redirects=True) as client:
        csrf = walk(client, code or vm.setup_code(), model)
        finished = client.post("/setup/finish", data={"csrf": csrf})
        assert finished.url.path == "/", f"setup did not finish: {finished.status_code} {finished.url}"


def confirm_kit(owner: httpx.Client) -> str:
    """Backups turned on as the Backups page asks: the group of the recovery kit it names typed back; the key."""
    page = owner.get("/manage/backups").text
    groups = re.findall(r"<span>([^<]+)</span>", re.search(r'id="kit-key">(.*?)</p>', page, re.S).group(1))[1:]
    ask = int(re.search(r'data-group="(\d+)"', page).group(1))
    confirmed = owner.post("/backups/key", json={"group": ask, "typed": groups[ask - 1]})
    assert confirmed.status_code == 200, confirmed.text
    return "AGE-SECRET-KEY-1" + "".join(groups)


def owner_client(vm: VM) -> httpx.Client:
    """The owner logged in over HTTPS (the box's own certificate), as the in-image wizard made them; its
    CSRF token in the client's headers."""
    client = httpx.Client(base_url=vm.https_url, verify=False, timeout=120, follow_redirects=True)
    page = client.post("/login", data={"name": "Ada", "password": PASSWORD, "next": "/access"})
    assert page.status_code == 200 and page.url.path == "/access", f"the owner cannot log in: {page.status_code}"
    client.headers["X-CSRF-Token"] = csrf_of(page)
    return client
