"""The x86-64 disk image: built by build.py with mkosi, booted in qemu (TCG), checked from outside and inside.

One build and one boot serve every check: under TCG a boot takes minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.image
sys.path.insert(0, str(ROOT))
import build  # noqa: E402

VERSION = "1.0.0"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GENERIC = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GROW_BY = 2 << 30

# Injected as a systemd credential, so the product image carries no test code: once the assistant and
# the token unit (build.TOKEN_UNIT) are done, report failed units and the size of /var on the console.
CHECK_UNIT = """\
[Unit]
After=paladin.service paladin-token.service

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo "PALADIN-CHECK var_bytes=$(findmnt -bno SIZE /var) failed=$(systemctl --failed --no-legend --plain | cut -d" " -f1 | tr "\\n" " ")"'
"""


@pytest.fixture(scope="session")
def image(tmp_path_factory, tiny_model) -> dict:
    out = tmp_path_factory.mktemp("image")
    done = subprocess.run([ROOT / "build.py", "image", "--arch", "x86-64", "--version", VERSION, "--model",
                           tiny_model, "--out", out, "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nimage: {report['raw_bytes'] / 2**20:.0f} MiB raw, {report['compressed_bytes'] / 2**20:.0f} MiB zstd, "
          f"mkosi build {report['build_seconds']} s")
    return report


@pytest.fixture(scope="session")
def box(image, tmp_path_factory):
    """The image booted once (on a copy grown by 2 GiB, as a bigger USB stick would be)."""
    work = tmp_path_factory.mktemp("boot")
    disk = work / "disk.raw"
    subprocess.run(["cp", "--sparse=always", image["image"], disk], check=True)
    with disk.open("r+b") as f:
        f.truncate(disk.stat().st_size + GROW_BY)
    serial = work / "serial.log"
    port = free_port()
    argv = build.qemu_argv(disk, "x86-64", port, work / "efivars.fd", {"paladin-check.service": CHECK_UNIT},
                           serial=serial)
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return serial.read_text(errors="replace")[-6000:] if serial.exists() else "(no serial output)"

    try:
        health = None
        while time.monotonic() - started < 900:
            if qemu.poll() is not None:
                pytest.fail(f"qemu exited with {qemu.returncode}: {qemu.stderr.read().decode()}\n{log_tail()}")
            try:
                health = httpx.get(url + "/health", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if re.search(r"Kernel panic|emergency mode|Failed to start paladin", log_tail()):
                pytest.fail(f"the box failed to boot:\n{log_tail()}")
            time.sleep(2)
        else:
            pytest.fail(f"no /health 200 after 900 s:\n{log_tail()}")
        boot_seconds = time.monotonic() - started
        while "failed=" not in serial.read_text(errors="replace") and time.monotonic() - started < 1200:
            time.sleep(2)
        text = serial.read_text(errors="replace")
        checks = {"token": re.search(r"PALADIN-TOKEN (\S*)", text).group(1),
                  "var_bytes": re.search(r"PALADIN-CHECK var_bytes=(\d+)", text).group(1),
                  "failed": re.search(r"PALADIN-CHECK .* failed=(.*?)\s*$", text, re.M).group(1)}
        print(f"\nboot to /health 200: {boot_seconds:.0f} s under TCG")
        yield {"url": url, "health": health.json(), "boot_seconds": boot_seconds, "checks": checks,
               "serial": serial}
    finally:
        qemu.kill()
        qemu.wait()


def test_partition_table_has_esp_two_equal_root_slots_and_data(image):
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    assert [p["type"] for p in table] == [ESP, ROOT_X86_64, ROOT_X86_64, LINUX_GENERIC]
    assert [p.get("name") for p in table][1:] == [f"paladin_{VERSION}", "_empty", "paladin-data"]
    assert table[1]["size"] == table[2]["size"]


def test_image_fits_the_size_budget(image):
    assert Path(image["compressed"]).stat().st_size <= 300e6  # the 5 MB test model included


def test_box_answers_health_with_the_model(box):
    assert box["health"]["status"] == "ok" and box["health"]["model"] == "tiny"


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
    assert box["checks"]["failed"] == "", box["serial"].read_text(errors="replace")[-4000:]


def test_data_partition_grew_to_fill_the_disk(box, image):
    table = json.loads(subprocess.run(["sfdisk", "--json", image["image"]], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    built = table["partitions"][-1]["size"] * table.get("sectorsize", 512)
    assert int(box["checks"]["var_bytes"]) > built + GROW_BY // 2
