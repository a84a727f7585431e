"""A Raspberry Pi's tryboot trial in the booted Pi image: qemu's raspi4b, with this bench as the firmware (TCG, slow).

    ./build.py bench pitrial --image paladin_V_arm64-rpi.raw [--json FILE] [--keep DIR] [--deadline S]

The one simulation is the firmware's documented choice (`choose` of tests/support/pifirmware.py): the bench
reads autoboot.txt off the card, boots the boot partition its [tryboot] section names, with the device tree's
/chosen/bootloader `tryboot` = 1 and `partition` set as the firmware sets them, and reads autoboot.txt again
once the box is done.  The rest is the box's own: its kernel, initrd and root, the boot assessment
(paladin-health), paladin-tryboot-commit or paladin-boot-failed, and tryboot.py on the card's vfat.  Boot slot
B holds a copy of boot slot A, as if an update had written it: the same kernel and root, so what is tried is
the boot side and the box's judgement, not a new root (the x86 boxes of the test suite try new roots).  Two
trials, each on its own copy of the card, side by side (one vCPU each):

* kept: the assessment passes and paladin-tryboot-commit makes B the default;
* failed: the trial's command line masks paladin.service (a version whose assistant never starts): the
  assessment gives up at its deadline (8 min), paladin-boot-failed restarts the box plainly (no tryboot flag
  at qemu's mailbox), and autoboot.txt still names A, which the firmware then boots.

Not tried here: a hang.  Under raspi4b the watchdog's driver stays unloaded (tests/bench/raspi4b.py says
why); that any reset clears the firmware's one-shot flag is the simulation's (tests/update/test_tryboot.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance.update.tryboot import Autoboot
from buildhost.debian import ensure_host_packages
from buildhost.steps import run, say
from tests.bench.raspi4b import BOOT_SLOT, DTB, FAILED, boot_files, card, cmdline, device_tree, flagged, qemu, until
from tests.support.pifirmware import choose
from tests.support.vm import card as card_drive, partitions

TRIAL_SLOT = 3  # boot slot B
TRIALS = {
    "kept": ([], r"Finished paladin-tryboot-commit\.service|unit=paladin-tryboot-commit .*res=success"),
    "failed": (["systemd.mask=paladin.service"], r"reboot: Restarting system.*"),
}
DEADLINE = 2700


def autoboot(sd: Path) -> bytes:
    """autoboot.txt, off the card's first partition (the PALADIN drive), as the firmware reads it."""
    return subprocess.run(["mtype", "-i", card_drive(sd), "::/autoboot.txt"], capture_output=True, check=True).stdout


def written(sd: Path) -> None:
    """Boot slot B made a copy of boot slot A, as an update writes a boot partition."""
    table = partitions(sd)
    source, target = table[BOOT_SLOT - 1], table[TRIAL_SLOT - 1]
    assert source["bytes"] == target["bytes"], (source, target)
    run(["dd", f"if={sd}", f"of={sd}", "bs=4M", "iflag=skip_bytes,count_bytes", "oflag=seek_bytes",
         f"skip={source['offset']}", f"seek={target['offset']}", f"count={source['bytes']}", "conv=notrunc",
         "status=none"])


def firmware_tree(dtb: Path, out: Path, partition: int) -> None:
    """The board's device tree as qemu needs it (raspi4b.device_tree), with what the firmware leaves in it
    for a trial: /chosen/bootloader tryboot = 1 and the partition it booted."""
    device_tree(dtb, out)
    run(["fdtput", "-c", out, "/chosen/bootloader"])
    for name, value in (("tryboot", 1), ("partition", partition)):
        run(["fdtput", "-t", "u", out, "/chosen/bootloader", name, str(value)])


def trial(name: str, raw: Path, work: Path, deadline_s: int) -> dict:
    """One trial on its own card: the firmware's choice, the boot, and autoboot.txt afterwards."""
    args, ended = TRIALS[name]
    here = work / name
    here.mkdir(parents=True, exist_ok=True)
    sd = here / "sd.raw"
    card(raw, sd)
    written(sd)
    tried = choose(autoboot(sd), tryboot=True)  # after `reboot "0 tryboot"`, the flag the module set
    files = boot_files(sd, here, tried)
    firmware_tree(files[DTB], here / "firmware.dtb", tried)
    console, unimp = here / "console.log", here / "unimp.log"
    started = time.monotonic()
    seen = until([qemu(), "-M", "raspi4b", "-display", "none", "-monitor", "none", "-no-reboot",
                  "-serial", f"file:{console}", "-d", "unimp", "-D", unimp, "-kernel", files["vmlinuz"],
                  "-dtb", here / "firmware.dtb", "-initrd", files["initrd"],
                  "-append", " ".join([cmdline(files["cmdline.txt"].read_text()), *args]),
                  "-drive", f"if=sd,format=raw,file={sd}"], console, f"{ended}|{FAILED}", deadline_s)
    after = autoboot(sd)
    sd.unlink()
    result = {"tried": tried, "ended": seen[0].strip() if seen else None, "seconds": round(time.monotonic() - started),
              "autoboot": after.decode(errors="replace"), "next boot": choose(after, tryboot=False),
              "flag": flagged(unimp)}
    say(f"{name}: {result}")
    return result


def checks(kept: dict, failed: dict) -> dict[str, bool]:
    return {
        "the firmware's trial boots boot slot B": kept["tried"] == failed["tried"] == TRIAL_SLOT,
        "kept: paladin-tryboot-commit ran after the assessment passed": bool(kept["ended"]) and
        "paladin-tryboot-commit" in kept["ended"],
        "kept: autoboot.txt makes B the default (and A the next trial)": kept["autoboot"].encode() ==
        Autoboot(TRIAL_SLOT, BOOT_SLOT).render() and kept["next boot"] == TRIAL_SLOT,
        "failed: the box restarted plainly, no tryboot flag": bool(failed["ended"]) and
        failed["ended"] == "reboot: Restarting system" and not failed["flag"],
        "failed: autoboot.txt unchanged, A boots next": failed["autoboot"].encode() ==
        Autoboot(BOOT_SLOT, TRIAL_SLOT).render() and failed["next boot"] == BOOT_SLOT,
    }


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--image", required=True, help="an image built by build.py image --arch arm64 --board rpi")
    top.add_argument("--json", help="also write the results to this file")
    top.add_argument("--keep", help="work in this directory and keep it (boot files, consoles, qemu's logs)")
    top.add_argument("--deadline", type=int, default=DEADLINE, help="seconds a trial may take (default %(default)s)")
    args = top.parse_args()
    started = time.monotonic()
    ensure_host_packages(["mtools", "device-tree-compiler"])
    qemu()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        with ThreadPoolExecutor(len(TRIALS)) as pool:
            results = dict(zip(TRIALS, pool.map(lambda name: trial(name, Path(args.image), work, args.deadline),
                                                TRIALS)))
    found = checks(results["kept"], results["failed"])
    for what, ok in found.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"{sum(found.values())}/{len(found)} checks passed ({round(time.monotonic() - started)} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": args.image, "trials": results, "checks": found}, indent=1))
    raise SystemExit(0 if all(found.values()) else 1)


if __name__ == "__main__":
    main()
