"""A Raspberry Pi's tryboot A/B against power cuts at every sector the updater writes (x86-64 box, TCG).

    ./build.py bench tryboot [--json FILE]

The card's first partition (the PALADIN drive with autoboot.txt, FAT32 as systemd-repart makes it) is
attached to a booted box through qemu's `blklogwrites` driver, which logs every write the guest's kernel
sends to it.  In the box, the real `appliance/update/tryboot.py` on Linux's vfat does what an update does
to it: disarm (no trial can reach the boot partition being written), arm the trial of partition 3, then,
on the trial boot (a device tree written by the bench: the SIMULATED firmware's report), commit.  The box
is the x86-64 image only because no Pi boots here: the kernel's FAT driver and the updater's code are the
same.  Then every state a cut can leave (tests/support/writelog.py: each sector of the writes, in order)
is read with mtools, as another FAT reader than the one that wrote it, and the firmware's documented
choice (tests/support/pifirmware.py) is made on it: every state must hold a whole autoboot.txt, one of the
sequence's, in order, with a bootable default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.update.progress import UpdateError
from appliance.update.tryboot import Autoboot
from buildhost import ROOT, tinymodel
from tests.support.pifirmware import choose
from tests.support.vm import VM, build_image, fat_files, fat_write, run_build
from tests.support.writelog import states, writes

CARD_MIB = 64
# What the card holds before, and after each rewrite: install's two (around writing boot partition 3), the commit.
SEQUENCE = [Autoboot(2, 3), Autoboot(2, 2), Autoboot(2, 3), Autoboot(3, 2)]
GUEST = """
import subprocess, sys
from pathlib import Path
from appliance.update.tryboot import Autoboot, Tryboot

card, tree = Path("/run/bench-card"), Path("/run/bench-dt")
card.mkdir()
subprocess.run(["mount", "-t", "vfat", "/dev/disk/by-id/virtio-pi-card", card], check=True)

def firmware(partition, tryboot):  # what the Pi's firmware leaves in the device tree, simulated
    (tree / "chosen/bootloader").mkdir(parents=True, exist_ok=True)
    for name, value in (("partition", partition), ("tryboot", tryboot)):
        (tree / "chosen/bootloader" / name).write_bytes(value.to_bytes(4, "big"))

box = Tryboot(card / "autoboot.txt", tree)
firmware(2, 0)
box.write(Autoboot(2, 2))  # install: first no trial can reach partition 3 while it is written
box.write(Autoboot(2, 3))  # install: partition 3 written and checked, named for one trial
firmware(3, 1)             # the trial boot
box.commit()
print("tryboot bench:", box.read(), flush=True)
subprocess.run(["umount", card], check=True)
subprocess.run(["systemctl", "poweroff"])
"""
UNIT = """[Unit]
After=multi-user.target
[Service]
Type=oneshot
ImportCredential=tryboot-bench.py
ExecStart=/usr/lib/paladin/bin/python ${CREDENTIALS_DIRECTORY}/tryboot-bench.py
StandardOutput=journal+console
"""


def card(path: Path) -> None:
    """The PALADIN drive of a Pi image as flashed: FAT32, autoboot.txt naming partition 2, a trial of 3."""
    subprocess.run(["truncate", "-s", f"{CARD_MIB}M", path], check=True)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "PALADIN", path], check=True, capture_output=True)
    fat_write(str(path), "autoboot.txt", SEQUENCE[0].render())


def judge(disk: Path) -> tuple[Autoboot | None, str]:
    """What autoboot.txt says in this state (None: nothing whole), and what the firmware would boot."""
    files = fat_files(str(disk))
    if "autoboot.txt" not in files:
        return None, f"no autoboot.txt (the drive holds {files})"
    read = subprocess.run(["mtype", "-i", disk, "::/autoboot.txt"], capture_output=True)
    if read.returncode:
        return None, f"autoboot.txt is listed but unreadable: {read.stderr.decode(errors='replace').strip()}"
    text = read.stdout
    try:
        state = Autoboot.parse(text)
    except UpdateError as err:  # torn: the run fails, saying so
        return None, f"autoboot.txt is {text[:80]!r} ({err})"
    return state, f"boots {choose(text, tryboot=False)}, tries {choose(text, tryboot=True)}"


def in_order(found: list[Autoboot | None]) -> bool:
    """Whether the states walk SEQUENCE forward (each one it holds, or a later one) to its end."""
    at = 0
    for state in found:
        later = [i for i in range(at, len(SEQUENCE)) if SEQUENCE[i] == state]
        if not later:
            return False
        at = later[0]
    return at == len(SEQUENCE) - 1


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--json", help="also write the results to this file")
    top.add_argument("--keep", help="work in this directory and keep it (the card, its write log, the box)")
    args = top.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        keys, model = work / "keys", tinymodel.write(work / "tiny.gguf", "small")
        run_build(ROOT / "build.py", "keys", "init", "--keys", keys)
        image = build_image("1", work / "v1", model, keys)
        before, written, log = work / "card-before.img", work / "card.img", work / "card.log"
        card(before)
        subprocess.run(["cp", before, written], check=True)
        log.touch()
        drive = (f"driver=blklogwrites,node-name=card,log-sector-size=512,file.driver=file,"
                 f"file.filename={written},log.driver=file,log.filename={log}")
        vm = VM(Path(image["image"]), work / "box", units={"tryboot-bench.service": UNIT, "tryboot-bench.py": GUEST},
                devices=("-blockdev", drive, "-device", "virtio-blk-pci,drive=card,serial=pi-card"))
        try:
            vm.start()
            vm.qemu.wait(timeout=900)  # the guest powers off when done
            said = vm.printed(r"tryboot bench: (.*)", "the bench's outcome")
        finally:
            vm.close()
        _, logged = writes(log)
        results = []
        for applied, disk in states(before, log, work):
            state, what = judge(disk)
            results.append({"sectors": applied, "state": state, "what": what})
    ordered = in_order([r["state"] for r in results])
    for r in results:
        print(f"after {r['sectors']:3} sectors: {r['state'] or '-'}: {r['what']}")
        r["state"] = r["state"] and r["state"].render().decode()
    print(f"in the box: {said}; {sum(w is not None for w in logged)} writes and "
          f"{sum(w is None for w in logged)} flushes logged; {len(results)} cut states, "
          f"{'every one' if ordered else 'NOT every one'} a whole autoboot.txt of the sequence, in order "
          f"({round(time.monotonic() - started)} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"ordered": ordered, "states": results}, indent=1))
    raise SystemExit(0 if ordered else 1)


if __name__ == "__main__":
    main()
