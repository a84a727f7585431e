"""The Raspberry Pi 4/5 image's layout, checked: one command, slow (an arm64 build under qemu-user).

    ./build.py bench rpi [--image paladin_V_arm64-rpi.raw] [--json FILE]

Builds the image (`build.py image --arch arm64 --board rpi`), unless given one, and checks on the host, with
mtools and veritysetup, what a Pi's firmware and its initrd will read: the partition table (the PALADIN drive,
boot slots A and B, the x86 slots and data), `autoboot.txt` as the updater writes it, `config.txt`, the
firmware, kernel, initrd and device trees of both boards on boot slot A, the watchdog from the initrd on
(`systemd.watchdog_sec=` and the appended initrd tree), and the root hash in `cmdline.txt`:
the halves of the slot's PARTUUIDs, and the one `veritysetup verify` accepts for the root slot's bytes.  Then
it releases the image (`build.py release`, keys made for the bench) and checks that the release is a Pi's:
root, verity and boot slot A's bytes, under arm64-rpi/.  What it does not do: boot it (docs/image.md says how far qemu's raspi4b gets).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from appliance import facts
from appliance.update.tryboot import Autoboot
from buildhost import ROOT, release
from buildhost.debian import ensure_host_packages
from tests.support.vm import fat, fat_files, fat_read, partition_digest, partitions, run_build

BOOT_FILES = {"start4.elf", "fixup4.dat", "config.txt", "cmdline.txt", "vmlinuz", "initrd", "bcm2711-rpi-4-b.dtb",
              "bcm2711-rpi-400.dtb", "bcm2712-rpi-5-b.dtb", "bcm2712d0-rpi-5-b.dtb"}


def checks(raw: Path, work: Path) -> dict[str, bool]:
    table = partitions(raw)
    names = [p.get("name", "") for p in table]
    version = names[3].removeprefix(f"{facts.IMAGE_ID}_")
    fats = {number: fat(raw, number) for number in (1, 2)}
    found = {
        "partitions: PALADIN, boot A/B, root A/B with verity, data": names == [
            facts.CARD_LABEL, facts.slot_label(version, "boot"), facts.EMPTY_SLOT, facts.slot_label(version, "root"),
            facts.slot_label(version, "verity"), facts.EMPTY_SLOT, facts.EMPTY_SLOT, facts.DATA_LABEL],
        "types: basic data, EFI system ×2": [p["type"].lower() for p in table[:3]] == [
            facts.CARD_TYPE, facts.BOOT_SLOT_TYPE, facts.BOOT_SLOT_TYPE],
        "PALADIN drive: autoboot.txt and README.txt": fat_files(fats[1]) == ["README.txt", "autoboot.txt"],
        "boot A: firmware, kernel, initrd, device trees": BOOT_FILES <= set(fat_files(fats[2])),
    }
    text = {name: fat_read(fats[number], name)
            for number, name in ((1, "autoboot.txt"), (2, "config.txt"), (2, "cmdline.txt"))}
    found["autoboot.txt: as the updater writes it (≤ 512 bytes)"] = text["autoboot.txt"] == Autoboot(2, 3).render()
    found["config.txt: 64-bit, kernel and initrd"] = all(
        line in text["config.txt"].decode().splitlines() for line in ("arm_64bit=1", "kernel=vmlinuz",
                                                                      "initramfs initrd followkernel"))
    roothash = re.search(r"\broothash=([0-9a-f]{64})\b", text["cmdline.txt"].decode())
    halves = (table[3]["uuid"] + table[4]["uuid"]).replace("-", "").lower()
    found["cmdline.txt: root hash = the slot's PARTUUIDs"] = bool(roothash) and roothash[1] == halves
    found["watchdog from the initrd on: cmdline.txt's systemd.watchdog_sec=, the trial's fallback appended"] = (
        "systemd.watchdog_sec=10s" in text["cmdline.txt"].decode().split() and
        b"usr/lib/systemd/system/emergency.target.wants/paladin-trial-fallback.service" in fat_read(fats[2], "initrd"))
    slices = []
    for number in (4, 5):
        part = work / f"p{number}.raw"
        subprocess.run(["dd", f"if={raw}", f"of={part}", "bs=512", f"skip={table[number - 1]['start']}",
                        f"count={table[number - 1]['size']}", "status=none"], check=True)
        slices.append(part)
    verified = subprocess.run(["veritysetup", "verify", *slices, roothash[1] if roothash else "0" * 64],
                              capture_output=True, text=True)
    found["veritysetup verify: the root slot's bytes have that hash"] = verified.returncode == 0
    return found | released(raw, work, table)


def released(raw: Path, work: Path, table: list[dict]) -> dict[str, bool]:
    release.keys_init(work / "keys")
    repository = release.Repository(work / "repo", work / "keys")
    repository.release(raw)
    targets = repository.targets().signed.targets
    kinds = {info.custom["paladin"]["kind"]: info for info in targets.values()}
    signed = kinds["boot"].custom["paladin"] if "boot" in kinds else {}
    return {
        "release: root, verity and boot targets under arm64-rpi/": sorted(kinds) == ["boot", "root", "verity"] and
        all(name.startswith(f"{facts.flavour('arm64', 'rpi')}/") for name in targets),
        # up to its zeros, spanning the slot (docs/updates.md: a release carries a slot image up to its zeros)
        "release: its boot target is boot slot A, bytes and PARTUUID": bool(signed) and
        signed["raw_sha256"] == partition_digest(raw, 2, signed["raw_length"]) and
        signed["slot_length"] == table[1]["bytes"] and table[1]["uuid"].lower() in kinds["boot"].path,
    }


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--image", help="an image built by build.py image --arch arm64 --board rpi")
    top.add_argument("--json", help="also write the results to this file")
    args = top.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ensure_host_packages(["cryptsetup-bin"])  # veritysetup
        raw = Path(args.image) if args.image else Path(json.loads(run_build(
            ROOT / "build.py", "image", "--arch", "arm64", "--board", "rpi", "--no-compress", "--out", work / "out",
            "--json"))["image"])
        built = round(time.monotonic() - started)
        found = checks(raw, work)
    for what, ok in found.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"{sum(found.values())}/{len(found)} checks passed on {raw.name} (build {built} s, "
          f"{round(time.monotonic() - started)} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": str(raw), "checks": found}, indent=1))
    raise SystemExit(0 if all(found.values()) else 1)


if __name__ == "__main__":
    main()
