"""The x86-64 disk image: built by build.py with mkosi, booted in qemu (TCG), checked from outside and inside.

One build and one boot (tests/image/box/conftest.py) serve every check here and in tests/image/box/test_network.py: under
TCG a boot takes minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from appliance import facts
from tests.support.booted import GROW_BY, VERSION
from tests.support.lan import BOX_ADDRESS
from tests.support.vm import card, fat_files
from tests.support.wizard import CHROMIUM, Shots, browser_page, chat, run_setup

pytestmark = pytest.mark.image

ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
VERITY_X86_64 = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GENERIC = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

@pytest.fixture(scope="module")
def seen_on_the_lan(booted, lan, laptop) -> dict:
    """What a laptop on the box's LAN sees over mDNS, from its own network namespace."""
    return lan.mdns(laptop, facts.MDNS_NAME, "_https._tcp.local.")


def test_partition_table_has_esp_two_verity_root_slots_the_paladin_drive_and_data(image):
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    assert [p["type"] for p in table] == [ESP, ROOT_X86_64, VERITY_X86_64, ROOT_X86_64, VERITY_X86_64,
                                          facts.CARD_TYPE.upper(), LINUX_GENERIC]
    assert [p.get("name") for p in table][1:] == [f"paladin_{VERSION}", f"paladin_{VERSION}_verity", "_empty",
                                                  "_empty", facts.CARD_LABEL, "paladin-data"]
    assert fat_files(card(Path(image["image"]))) == ["README.txt"]  # what a computer shows of it
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


def test_box_answers_health_with_the_model(booted):
    assert booted["health"]["status"] == "ok" and booted["health"]["model"] == "tiny"
    assert booted["health"]["version"] == VERSION


def test_box_streams_a_chat_completion(booted):
    token = booted["checks"]["token"]
    assert token.startswith("pal_")
    with httpx.stream("POST", booted["url"] + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {token}"},
                      json={"model": "paladin", "messages": [{"role": "user", "content": "Hello box"}],
                            "stream": True, "max_tokens": 8}) as response:
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert response.status_code == 200
    assert sum(1 for c in chunks if json.loads(c[6:])["choices"][0]["delta"].get("content")) >= 2


def test_the_governor_runs_sandboxed_under_its_own_user_and_reports_the_rung(booted):
    assert booted["checks"]["governor"] == ("active paladin-governor paladin-governor 700 paladin-governor 666"), \
        booted["checks"]["governor"]
    governor = httpx.get(booted["url"] + "/health", timeout=60).json()["governor"]
    assert governor["connected"] and governor["enabled"] and governor["rung"]["model"] == "tiny", governor
    assert governor["index"] < governor["rungs"]


def test_no_unit_failed(booted):
    assert booted["checks"]["failed"] == "", booted["vm"].console()[-4000:]


def test_data_partition_grew_to_fill_the_disk(booted, image):
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    built = table["partitions"][-1]["size"] * table.get("sectorsize", 512)
    assert int(booted["checks"]["var_bytes"]) > built + GROW_BY // 2


def test_no_host_code_is_in_the_image(booted):
    """Release signing, the generated models and the build pipeline never leave the build host."""
    assert booted["checks"]["host_code"] == ""


def test_box_answers_as_paladin_local_with_its_lan_address(lan, seen_on_the_lan):
    """The name resolves, over mDNS from another host, to the address the LAN's DHCP server gave the box,
    and to no IPv6 address: not the global one the box took from the home's ISP prefix too
    (tests/support/lan.py), which the firewall's LAN ranges do not hold and clients would try first."""
    assert seen_on_the_lan["addresses"] == [BOX_ADDRESS], lan.dhcp_log()[-3000:]
    assert seen_on_the_lan["ipv6"] == []


def test_box_advertises_https_and_nothing_else(seen_on_the_lan):
    assert seen_on_the_lan["types"] == ["_https._tcp.local."]
    assert seen_on_the_lan["services"] == {
        "PAL-adin on paladin._https._tcp.local.": {"port": facts.HTTPS_PORT, "server": f"{facts.MDNS_NAME}.",
                                                   "addresses": [BOX_ADDRESS]}}


def test_the_console_shows_the_setup_code_and_the_certificates_fingerprint(booted):
    console = booted["vm"].console()
    assert re.search(r"Setup code: [A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", console)
    assert re.search(r"Certificate SHA-256: ([0-9A-F]{2}:){31}[0-9A-F]{2}", console)
    assert booted["checks"]["issue"] == "1"  # and the getty's issue file shows it above the login prompt


def test_network_time_runs_as_the_owner_chose_by_default(booted):
    assert booted["checks"]["timesync"] == "active"


def test_box_redirects_plain_http_to_https(booted):
    vm = booted["vm"]
    moved = httpx.get(vm.redirect_url + "/", headers={"Host": "paladin.local"})
    assert moved.status_code == 308 and moved.headers["location"] == "https://paladin.local/"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")
def test_a_new_owner_finishes_setup_in_a_browser_and_chats(booted):
    """Last in this file: it makes the box the owner's (the API token the tests use keeps working)."""
    vm = booted["vm"]
    from playwright.sync_api import expect

    with browser_page() as page:
        seconds = run_setup(page, vm.https_url, vm.setup_code(), Shots(None))
        print(f"\nwizard finished {seconds:.0f} s after the first page was asked for (TCG)")
        # The generated model writes until its token limit, minutes under TCG: a streaming reply is the proof,
        # and Stop ends it.
        assert chat(page, "Hello box", whole=False)
        page.click("#stop")
        expect(page.locator("#messages li.assistant .note")).to_have_text("You stopped this reply.")
        # The owner's pages, in the box's sandbox: its journal is readable, its certificate the console's.
        page.goto(vm.https_url + "/manage/system")
        expect(page.locator("#journal")).to_contain_text("a test error for the System page")
        fingerprint = re.search(r"Certificate SHA-256: (\S+)", vm.console()).group(1)
        expect(page.locator("#fingerprint")).to_have_text(fingerprint)
        page.goto(vm.https_url + "/manage/updates")  # the updater's view of the slots, as the owner sees it
        expect(page.locator("#slots tr", has_text="running now")).to_contain_text(VERSION)
        page.goto(vm.https_url + "/manage/models")
        expect(page.locator("#installed .badge")).to_have_text("in use")
    locked = httpx.get(vm.https_url + "/setup", verify=False, follow_redirects=False)
    assert locked.status_code == 303 and locked.headers["location"] == "/"  # for good, for everyone
