"""The image the image tests share (tests/image/box/), built once and booted once on a test LAN: every
check of test_image.py and test_network.py talks to this one box, which is shut down (package scope) as
soon as the last of them is done.  It boots when one of the two guest slots is free (tests/support/vm.py):
the update boxes, begun with the image layer (tests/image/updates/boxes.py), hold both until box B's run
ends."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.booted import CHECK_SCRIPT, CHECK_UNIT, GROW_BY, LAPTOP, OUTSIDER, VERSION
from tests.support import sticks
from tests.support.lan import OUTSIDE_GATEWAY, Lan
from tests.support.vm import VM


@pytest.fixture(scope="package")
def image(build_image) -> dict:
    report = build_image(VERSION)  # the one image compressed (tests/support/images.py): its size is checked
    print(f"\nimage: {report['raw_bytes'] / 2**20:.0f} MiB raw, {report['compressed_bytes'] / 2**20:.0f} MiB zstd, "
          f"mkosi build {report['build_seconds']} s")
    return report


@pytest.fixture(scope="package")
def lan(tmp_path_factory):
    """A LAN of network namespaces for the box's second NIC (tests/support/lan.py), gone with the box."""
    with Lan(tmp_path_factory.mktemp("lan")) as made:
        yield made


@pytest.fixture(scope="package")
def booted(image, lan, tmp_path_factory):
    """The image booted once (on a copy grown by 2 GiB, as a bigger USB stick would be), on `lan` too, with
    three USB sticks plugged in (numbered as in tests/support/sticks.py): a FAT one, an exFAT one whose
    write-protect switch is on, and a FAT one to be pulled out."""
    work = tmp_path_factory.mktemp("boot")
    plugged = {"writable": sticks.make(work / "stick.img", "vfat", "PALSTICK"),
               "protected": sticks.make(work / "locked.img", "exfat", "LOCKED"),
               "pulled": sticks.make(work / "pulled.img", "vfat", "PULLED")}
    vm = VM(Path(image["image"]), work, GROW_BY, {"paladin-check.service": CHECK_UNIT,
                                                 "paladin-check.sh": CHECK_SCRIPT}, lan=lan,
            devices=tuple(sticks.qemu_args([(plugged["writable"], False), (plugged["protected"], True),
                                            (plugged["pulled"], False)])))
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
               "started": started, "sticks": plugged}
    finally:
        vm.close()


@pytest.fixture(scope="package")
def laptop(lan) -> str:
    """A host on the box's LAN (its network namespace)."""
    return lan.add_host("laptop", LAPTOP)


@pytest.fixture(scope="package")
def outsider(lan) -> str:
    """A host outside the LAN's ranges that can still route to the box (its network namespace)."""
    return lan.add_host("outsider", OUTSIDER, gateway=OUTSIDE_GATEWAY)
