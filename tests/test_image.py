"""The x86-64 disk image: built by build.py with mkosi, booted in qemu (TCG), checked from outside and inside.

One build and one boot serve every check: under TCG a boot takes minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from appliance import facts
from lan import BOX_ADDRESS, Lan
from vm import VM
from wizard import CHROMIUM, Shots, browser_page, chat, run_setup

pytestmark = pytest.mark.image

VERSION = "1"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
VERITY_X86_64 = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GENERIC = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GROW_BY = 2 << 30
LAPTOP = "10.77.7.10/24"  # a host on the box's LAN (tests/lan.py)

# Injected as a systemd credential, so the product image carries no test code: once the assistant and
# the token unit (buildhost.qemu.TOKEN_UNIT) are done, report which host-only modules the box's venv
# can import (none may), failed units and the size of /var on the console.
HOST_ONLY = ("buildhost", "buildhost.release", "buildhost.tinymodel", "appliance.release", "appliance.tinymodel")
CHECK_UNIT = f"""\
[Unit]
After=paladin.service paladin-token.service

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/usr/lib/paladin/bin/python -c 'import importlib.util as u, sys; \
print("PALADIN-HOST-CODE", *[m for m in sys.argv[1:] if u.find_spec(m.split(".")[0]) and u.find_spec(m)])' \
{" ".join(HOST_ONLY)}
ExecStart=/bin/sh -c 'echo "PALADIN-ISSUE $(grep -c "Setup code: ...." /etc/issue.d/50-paladin.issue)"'
ExecStart=/bin/sh -c 'echo "PALADIN-TIMESYNC $(systemctl is-active systemd-timesyncd)"'
ExecStart=/bin/sh -c 'echo "PALADIN-CHECK var_bytes=$(findmnt -bno SIZE /var) failed=$(systemctl --failed --no-legend --plain | cut -d" " -f1 | tr "\\n" " ")"'
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
    vm = VM(Path(image["image"]), tmp_path_factory.mktemp("boot"), GROW_BY, {"paladin-check.service": CHECK_UNIT},
            lan=lan)
    started = time.monotonic()
    vm.start()
    try:
        health = vm.wait_health()
        boot_seconds = time.monotonic() - started
        while "failed=" not in vm.console() and time.monotonic() - started < 1200:
            time.sleep(2)
        text = vm.console()
        checks = {"token": vm.token(),
                  "var_bytes": re.search(r"PALADIN-CHECK var_bytes=(\d+)", text).group(1),
                  "failed": re.search(r"PALADIN-CHECK .* failed=(.*?)\s*$", text, re.M).group(1),
                  "host_code": re.search(r"PALADIN-HOST-CODE(.*?)\s*$", text, re.M).group(1).split(),
                  "issue": re.search(r"PALADIN-ISSUE (\d+)", text).group(1),
                  "timesync": re.search(r"PALADIN-TIMESYNC (\S+)", text).group(1)}
        print(f"\nboot to /health 200: {boot_seconds:.0f} s under TCG")
        yield {"url": vm.url, "health": health, "boot_seconds": boot_seconds, "checks": checks, "vm": vm}
    finally:
        vm.close()


@pytest.fixture(scope="session")
def seen_on_the_lan(box, lan) -> dict:
    """What a laptop on the box's LAN sees over mDNS, from its own network namespace."""
    return lan.mdns(lan.add_host("laptop", LAPTOP), facts.MDNS_NAME, "_https._tcp.local.")


def test_partition_table_has_esp_two_verity_root_slots_and_data(image):
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    assert [p["type"] for p in table] == [ESP, ROOT_X86_64, VERITY_X86_64, ROOT_X86_64, VERITY_X86_64, LINUX_GENERIC]
    assert [p.get("name") for p in table][1:] == [f"paladin_{VERSION}", f"paladin_{VERSION}_verity", "_empty",
                                                  "_empty", "paladin-data"]
    assert table[1]["size"] == table[3]["size"] and table[2]["size"] == table[4]["size"]


def test_the_uki_carries_the_root_hash_of_slot_a(image):
    """The slot's PARTUUIDs are the halves of the root hash on the UKI's command line: the UKI pins the root."""
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    uki = Path(image["image"]).with_suffix(".efi").read_bytes()
    roothash = re.search(rb"roothash=([0-9a-f]{64})", uki).group(1).decode()
    assert table[1]["uuid"].replace("-", "").lower() == roothash[:32]
    assert table[2]["uuid"].replace("-", "").lower() == roothash[32:]


def test_image_fits_the_size_budget(image):
    assert Path(image["compressed"]).stat().st_size <= 300e6  # the 5 MB test model included


def test_box_answers_health_with_the_model(box):
    assert box["health"]["status"] == "ok" and box["health"]["model"] == "tiny"
    assert box["health"]["version"] == VERSION


def test_box_streams_a_chat_completion(box):
    token = box["checks"]["token"]
    assert token.startswith("pal_")
    with httpx.stream("POST", box["url"] + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {token}"},
                      json={"model": "paladin", "messages": [{"role": "user", "content": "Hello box"}],
                            "stream": True, "max_tokens": 8}) as response:
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert response.status_code == 200
    assert sum(1 for c in chunks if json.loads(c[6:])["choices"][0]["delta"].get("content")) >= 2


def test_no_unit_failed(box):
    assert box["checks"]["failed"] == "", box["vm"].console()[-4000:]


def test_data_partition_grew_to_fill_the_disk(box, image):
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    built = table["partitions"][-1]["size"] * table.get("sectorsize", 512)
    assert int(box["checks"]["var_bytes"]) > built + GROW_BY // 2


def test_no_host_code_is_in_the_image(box):
    """Release signing, the generated models and the build pipeline never leave the build host."""
    assert box["checks"]["host_code"] == []


def test_box_answers_as_paladin_local_with_its_lan_address(lan, seen_on_the_lan):
    """The name resolves, over mDNS from another host, to the address the LAN's DHCP server gave the box."""
    assert seen_on_the_lan["addresses"] == [BOX_ADDRESS], lan.dhcp_log()[-3000:]


def test_box_advertises_https_and_nothing_else(seen_on_the_lan):
    assert seen_on_the_lan["types"] == ["_https._tcp.local."]
    assert seen_on_the_lan["services"] == {
        "PAL-adin on paladin._https._tcp.local.": {"port": facts.HTTPS_PORT, "server": f"{facts.MDNS_NAME}.",
                                                   "addresses": [BOX_ADDRESS]}}


def test_the_console_shows_the_setup_code_and_the_certificates_fingerprint(box):
    console = box["vm"].console()
    assert re.search(r"Setup code: [A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", console)
    assert re.search(r"Certificate SHA-256: ([0-9A-F]{2}:){31}[0-9A-F]{2}", console)
    assert box["checks"]["issue"] == "1"  # and the getty's issue file shows it above the login prompt


def test_network_time_runs_as_the_owner_chose_by_default(box):
    assert box["checks"]["timesync"] == "active"


def test_box_redirects_plain_http_to_https(box):
    vm = box["vm"]
    moved = httpx.get(vm.redirect_url + "/", headers={"Host": "paladin.local"})
    assert moved.status_code == 308 and moved.headers["location"] == "https://paladin.local/"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")
def test_a_new_owner_finishes_setup_in_a_browser_and_chats(box):
    """Last in this file: it makes the box the owner's (the API token the tests use keeps working)."""
    vm = box["vm"]
    with browser_page() as page:
        seconds = run_setup(page, vm.https_url, vm.setup_code(), Shots(None))
        print(f"\nwizard finished {seconds:.0f} s after the first page was asked for (TCG)")
        # The generated model writes until its token limit, minutes under TCG: a streaming reply is the proof.
        assert chat(page, "Hello box", whole=False)
    locked = httpx.get(vm.https_url + "/setup", verify=False, follow_redirects=False)
    assert locked.status_code == 303 and locked.headers["location"] == "/"  # for good, for everyone
