"""The booted image (tests/image/box/conftest.py) as an attacker on the LAN, a stranger beyond it and its owner see it:
the firewall from hosts in network namespaces (nmap), SSH turned on through the owner's request, the limit
on new connections, what the box sends (qemu's packet captures), and the hardening read inside the box.

After tests/image/box/test_image.py, whose last test makes the box the owner's in a browser.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from buildhost.qemu import USER_NIC_MAC
from tests import support
from tests.support import sticks
from tests.support.booted import UNITS, confirm_kit, owner_client
from tests.support.capture import Packet, read, sent_by
from tests.support.lan import BOX_ADDRESS, BOX_MAC, run_in
from tests.support.wizard import browser_page, log_in

pytestmark = pytest.mark.image
WEB_PORTS = {80, 443, 8080}
SSH = 22
BURST = Path(support.__file__).with_name("lan_burst.py")  # run on a LAN host, as a script
# How long after boot the privacy check looks at the captures at the earliest: the whole run so far by
# default; PALADIN_PRIVACY_SECONDS=600 makes it the documented ten idle minutes (docs/security.md).
PRIVACY_SECONDS = float(os.environ.get("PALADIN_PRIVACY_SECONDS", "0"))


def nmap(netns: str, *options: str) -> dict[tuple[str, int | str], str | int]:
    """What nmap, from the host `netns`, says of the box's ports: {(protocol, port): state}, and how many
    ports it left unlisted in each state as {("extraports", state): count}."""
    out = ElementTree.fromstring(run_in(netns, ["nmap", "-n", "-Pn", "--max-retries", "2", "-oX", "-", *options,
                                                BOX_ADDRESS], timeout=900))
    return {(port.get("protocol"), int(port.get("portid"))): port.find("state").get("state")
            for port in out.iter("port")} | {("extraports", extra.get("state")): int(extra.get("count"))
                                              for extra in out.iter("extraports")}


def open_ports(found: dict, protocol: str) -> set[int]:
    return {port for (proto, port), state in found.items() if proto == protocol and state == "open"}


@pytest.fixture(scope="module")
def box_owner(booted):
    client = owner_client(booted["vm"])
    yield client
    client.close()


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory) -> tuple[Path, str]:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "owner@laptop", "-f", key], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def ssh(netns: str, key: Path, command: str, *options: str) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", netns, "ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=60", *options,
            f"root@{BOX_ADDRESS}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def apply(box_owner, changes: dict) -> dict:
    """The owner's firewall change through the page's request to the firewall helper, once it is applied."""
    before = box_owner.get("/system/firewall").json()["outcome"]
    asked = box_owner.put("/system/firewall", json=changes)
    assert asked.status_code == 202, asked.text
    deadline = time.monotonic() + 300
    while (state := box_owner.get("/system/firewall").json())["pending"] or state["outcome"] == before:
        assert time.monotonic() < deadline, f"the firewall helper did not take the request: {state}"
        time.sleep(2)
    assert state["outcome"]["ok"], state
    return state["settings"]


@pytest.fixture(scope="module")
def ssh_on(box_owner, ssh_key) -> Path:
    """SSH turned on by the owner for their key; the private key's path."""
    assert apply(box_owner, {"ssh": True, "ssh_key": ssh_key[1]})["ssh"]
    return ssh_key[0]


def flooded(netns: str, key: Path) -> int:
    listed = ssh(netns, key, "nft list counter inet paladin flooded")
    return int(re.search(r"packets (\d+)", listed.stdout).group(1))


def allowed(packet: Packet, network_time: bool) -> bool:
    """Whether the box may send `packet` on its own: the LAN's own protocols, answers to connections made
    to it, and name lookups and NTP only while network time is on."""
    if packet.protocol in ("arp", "igmp"):
        return True
    if packet.protocol == "udp" and (packet.destination_port in (67, 547, 5353) or packet.source_port == 5353):
        return True
    # ICMPv6 errors and echo replies, MLD reports (v1, v2), router and neighbour solicitations, advertisements
    if packet.protocol == "icmpv6" and packet.icmp_type in (1, 129, 131, 133, 135, 136, 143):
        return True
    if packet.protocol == "icmp" and packet.icmp_type in (0, 3):
        return True
    if packet.protocol == "tcp" and packet.source_port in WEB_PORTS | {SSH}:
        return True
    return network_time and packet.protocol in ("udp", "tcp") and packet.destination_port in (53, 123)


def test_nothing_leaves_the_box_but_what_its_configuration_allows(booted):
    vm = booted["vm"]
    time.sleep(max(0.0, PRIVACY_SECONDS - (time.monotonic() - booted["started"])))
    sent = {"user-mode NIC": sent_by(read(vm.capture("net0")), USER_NIC_MAC),
            "LAN NIC": sent_by(read(vm.capture("lan")), BOX_MAC)}
    network_time = booted["checks"]["timesync"] == "active"
    for nic, packets in sent.items():
        assert packets, f"nothing was captured on the box's {nic}"
        strangers = sorted({str(p) for p in packets if not allowed(p, network_time)})
        assert not strangers, f"the box sent, on its {nic}: {strangers}"
    assert not [p for packets in sent.values() for p in packets if p.destination_port == 5355]  # no LLMNR


def test_every_shipped_unit_has_an_exposure_of_at_most_2_in_the_box(booted):
    exposure = {unit: booted["checks"].get(f"exposure:{unit}") for unit in UNITS}
    assert all(value and float(value) <= 2.0 for value in exposure.values()), exposure
    print("\nexposure in the box:", json.dumps(exposure))


def test_the_kernel_the_accounts_and_the_journal_are_hardened(booted):
    checks = booted["checks"]
    expected = {"kernel.kptr_restrict": "2", "kernel.dmesg_restrict": "1", "kernel.unprivileged_bpf_disabled": "1",
                "fs.protected_symlinks": "1", "fs.protected_hardlinks": "1", "net.ipv4.tcp_syncookies": "1",
                "net.ipv4.conf.all.accept_redirects": "0", "net.ipv6.conf.all.accept_redirects": "0",
                "net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.all.accept_source_route": "0"}
    assert {key: checks[f"sysctl:{key}"] for key in expected} == expected
    assert checks["rp_filter"] == "1"  # strict on every interface, the default and all
    assert checks["root"] == "L" and checks["passwords"] == "0"
    assert int(checks["journal"]) >= 1  # kept on the data partition
    assert "5355" not in checks["udp_listeners"].split()  # no LLMNR responder


def test_ssh_is_off_and_the_box_made_its_own_host_key(booted):
    assert booted["checks"]["ssh"] == "inactive 0 600"  # not running, none from the image, one of its own
    assert booted["checks"]["firewall"] == "active 1"


def test_the_owner_turns_ssh_on_for_their_key_only(box_owner, ssh_on, laptop):
    shown = box_owner.get("/system/firewall").json()["host_key"]
    scanned = run_in(laptop, ["sh", "-c", f"ssh-keyscan -t ed25519 {BOX_ADDRESS} 2>/dev/null | ssh-keygen -l -f -"])
    assert shown and shown in scanned  # the page lets the owner check the key ssh sees the first time
    logged_in = ssh(laptop, ssh_on, "id -u; ls /var/lib/paladin-firewall/ssh")
    assert logged_in.returncode == 0, logged_in.stderr
    assert logged_in.stdout.split() == ["0", "authorized_keys", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    password = ssh(laptop, ssh_on, "true", "-o", "PubkeyAuthentication=no", "-o",
                   "PreferredAuthentications=password,keyboard-interactive")
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr


def scanned(netns: str) -> tuple[dict, dict]:
    """Every TCP port and the 50 likeliest UDP ones (with mDNS and LLMNR), as seen from `netns`."""
    return (nmap(netns, "-sS", "-p-", "--min-rate", "2000"),
            nmap(netns, "-sU", "--top-ports", "50", "-p", "U:5353,5355"))


def test_from_the_lan_exactly_the_documented_ports_answer_and_from_outside_none(ssh_on, laptop, outsider):
    """Both hosts scan at once (each scan mostly waits on dropped probes), with SSH on for the LAN."""
    run_in(outsider, ["ping", "-c", "3", "-W", "10", BOX_ADDRESS])  # it can reach the box: the route works
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        from_outside = pool.submit(scanned, outsider)
        tcp, udp = scanned(laptop)
        outside_tcp, outside_udp = from_outside.result()
    assert open_ports(tcp, "tcp") == WEB_PORTS | {SSH}
    assert open_ports(udp, "udp") <= {5353} and udp[("udp", 5355)] != "open"
    assert outside_tcp == {("extraports", "filtered"): 65535}  # every port dropped, not even refused: SSH too
    assert not open_ports(outside_udp, "udp")


def test_a_burst_of_new_connections_is_cut_while_an_established_one_keeps_working(booted, ssh_on, laptop):
    before = flooded(laptop, ssh_on)
    attempts = 300
    result = json.loads(run_in(laptop, [sys.executable, BURST, BOX_ADDRESS, 8080, attempts], timeout=300))
    dropped = flooded(laptop, ssh_on) - before
    assert result["kept"] == [200, 200] and result["same_connection"]  # answered before and after, unbroken
    assert 0 < result["connected"] < attempts and dropped > 0, (result, dropped)


# From inside the box: how a connection to qemu's host (the user-mode network's gateway) ends.  Nothing listens
# there on port 9: "refused" means the packet left the box; in privacy mode the firewall drops it ("dropped").
CONNECT_OUT = ("/usr/lib/paladin/bin/python -c 'import socket\n"
               "try: socket.create_connection((\"10.0.2.2\", 9), 5)\n"
               "except ConnectionRefusedError: print(\"refused\")\n"
               "except TimeoutError: print(\"dropped\")'")


def test_privacy_mode_lets_nothing_out_and_stops_network_time(box_owner, ssh_on, laptop):
    def inside() -> list[str]:
        done = ssh(laptop, ssh_on, f"systemctl is-active systemd-timesyncd; {CONNECT_OUT}")
        return done.stdout.split()

    assert inside() == ["active", "refused"]
    assert apply(box_owner, {"privacy": True})["privacy"]
    assert inside() == ["inactive", "dropped"]  # while SSH from the LAN still answers
    assert not apply(box_owner, {"privacy": False})["privacy"]
    assert inside() == ["active", "refused"]


def stick_helper(box_owner, path: str, body: dict | None = None) -> dict:
    """Ask the USB stick helper through the Backups API; its sticks and outcome once it has answered."""
    since = (box_owner.get("/backups").json()["sticks"]["outcome"] or {}).get("time", 0)
    asked = box_owner.post(path, json=body)
    assert asked.status_code == 202, asked.text
    deadline = time.monotonic() + 300
    while (state := box_owner.get("/backups").json()["sticks"])["pending"] or (state["outcome"] or {}).get(
            "time", 0) <= since:
        assert time.monotonic() < deadline, f"the stick helper did not answer: {state}"
        time.sleep(2)
    return state


def copy_in_a_browser(vm, stick: str) -> None:
    """The Backups page's USB stick card in Chromium, its script asking the helper and waiting for its answer:
    look for sticks, then copy the newest backup to `stick`; the page says it was copied and checked."""
    from playwright.sync_api import expect

    with browser_page() as page:
        log_in(page, vm.https_url)
        page.goto(vm.https_url + "/manage/backups")
        with page.expect_navigation(timeout=120_000):  # the page reloads once the helper has answered
            page.click("#look-for-sticks")
        expect(page.locator("#stick-list li")).to_have_count(3)
        with page.expect_navigation(timeout=120_000):
            page.click(f".copy-to-stick[data-stick='{stick}']")
        expect(page.locator("#sticks-status")).to_contain_text("copied to the stick PALSTICK and checked")


PULLED = 2  # the third stick the shared box has plugged in (tests/image/box/conftest.py)


def pulled_out_mid_copy(vm, box_owner, stick: str, image: Path) -> None:
    """A backup with the model in it (some MB) copied to a stick whose writes qemu slows to take about 8 s,
    pulled out once a third is written: the owner is told, and the stick holds no file of the backup's name
    (perhaps its .partial: only a whole, checked copy is named)."""
    assert box_owner.put("/backups/settings", json={"models": True}).status_code == 200
    made = box_owner.post("/backups")
    assert made.status_code == 201, made.text
    name, size = made.json()["name"], made.json()["bytes"]
    sticks.slow_down(vm, PULLED, size // 8)
    before = sticks.written(vm, PULLED)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        copying = pool.submit(stick_helper, box_owner, f"/backups/files/{name}/stick", {"stick": stick})
        deadline = time.monotonic() + 300
        while sticks.written(vm, PULLED) < before + size // 3:
            assert not copying.done(), f"the copy ended before a third was written: {copying.result()}"
            assert time.monotonic() < deadline, "the copy to the stick did not begin"
            time.sleep(0.2)
        sticks.pull(vm, PULLED)
        outcome = copying.result()["outcome"]
    assert not outcome["ok"] and "went away" in outcome["message"], outcome
    left = subprocess.run(["mdir", "-b", "-i", image, "::PAL-adin"], capture_output=True, text=True).stdout
    assert name not in {Path(line).name for line in left.split()}, left
    assert box_owner.put("/backups/settings", json={"models": False}).status_code == 200


def test_backups_daily_and_by_hand_restore_in_the_box_and_read_anywhere(booted, box_owner, ssh_on, laptop, tmp_path):
    """Last: the recovery kit typed back, Back up now, the daily unit in its sandbox, the backup read on this
    host by Debian's age, copied to a USB stick by the stick helper from the page in Chromium (refused by a
    write-protected one, cut short by one pulled out) and read from the stick here, and a restore that
    restarts the service in place (the same main process) and brings the owner and the wizard's
    conversation back."""
    vm = booted["vm"]
    key = confirm_kit(box_owner)
    made = box_owner.post("/backups")
    assert made.status_code == 201, made.text
    assert box_owner.put("/backups/settings", json={"schedule": True}).status_code == 200
    daily = ssh(laptop, ssh_on, "systemctl start paladin-backup.service; systemctl show -p Result --value "
                                "paladin-backup.service; systemctl show -p MainPID --value paladin.service")
    result, main_pid = daily.stdout.split()
    listed = box_owner.get("/backups").json()["backups"]
    assert result == "success" and len(listed) == 2 and listed[1]["name"] == made.json()["name"], (daily, listed)

    backup = tmp_path / listed[0]["name"]
    backup.write_bytes(box_owner.get(f"/backups/files/{listed[0]['name']}").content)
    (tmp_path / "key.txt").write_text(key + "\n")
    unpacked = subprocess.run(f"age -d -i key.txt {backup.name} | zstd -d | tar -t", shell=True, cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.split()
    assert unpacked[0] == "manifest.json" and "paladin.db" in unpacked and "firewall.json" in unpacked

    seen = {stick["label"]: stick for stick in stick_helper(box_owner, "/backups/sticks")["sticks"]}
    assert seen.keys() == {"PALSTICK", "LOCKED", "PULLED"} and seen["LOCKED"]["read_only"], seen
    assert seen["LOCKED"]["filesystem"] == "exfat" and seen["PALSTICK"]["filesystem"] == "vfat", seen
    to_stick = f"/backups/files/{backup.name}/stick"
    locked = stick_helper(box_owner, to_stick, {"stick": seen["LOCKED"]["id"]})["outcome"]
    assert not locked["ok"] and "write-protected" in locked["message"], locked
    copy_in_a_browser(vm, seen["PALSTICK"]["id"])
    copied = box_owner.get("/backups").json()["sticks"]
    assert copied["outcome"]["ok"], copied
    on_stick = {stick["label"]: stick["backups"] for stick in copied["sticks"]}
    assert on_stick == {"PALSTICK": [[backup.name, backup.stat().st_size]], "LOCKED": [], "PULLED": []}, copied
    read_here = tmp_path / "from-the-stick.age"  # mtools reads the stick the box wrote, as any computer would
    subprocess.run(["mcopy", "-i", booted["sticks"]["writable"], f"::PAL-adin/{backup.name}", read_here], check=True)
    assert read_here.read_bytes() == backup.read_bytes()
    pulled_out_mid_copy(vm, box_owner, seen["PULLED"]["id"], booted["sticks"]["pulled"])

    preview = box_owner.post(f"/backups/files/{listed[0]['name']}/restore")
    assert preview.status_code == 200 and preview.json()["owner"] == "Ada", preview.text
    assert box_owner.post("/backups/restore/confirm").status_code == 202
    time.sleep(5)
    vm.wait_health(timeout=600)
    after = ssh(laptop, ssh_on, "systemctl show -p MainPID --value paladin.service; systemctl show -p NRestarts "
                                "--value paladin.service; journalctl -u paladin -g 'a backup was restored' -o cat")
    assert after.stdout.split("\n")[:2] == [main_pid, "0"] and "restored" in after.stdout, after
    owner = owner_client(vm)  # the owner's password, from the backup
    try:
        assert owner.get("/conversations").json()["conversations"], "the wizard's conversation came back"
    finally:
        owner.close()
