"""A Raspberry Pi's tryboot trial in the booted Pi image: qemu's raspi4b, with this bench as the firmware (TCG, slow).

    ./build.py bench pitrial --image paladin_V_arm64-rpi.raw [--trial NAME]... [--json FILE] [--keep DIR] [--deadline S]

The one simulation is the firmware's documented choice (`choose` of tests/support/pifirmware.py): the bench
reads autoboot.txt off the card, boots the boot partition its [tryboot] section names, with the device tree's
/chosen/bootloader `tryboot` = 1 and `partition` set as the firmware sets them, and reads autoboot.txt again
once the box is done.  The rest is the box's own: its kernel, initrd and root, the boot assessment
(paladin-health), paladin-tryboot-commit or paladin-boot-failed, and tryboot.py on the card's vfat.  Boot slot
B holds a copy of boot slot A, as if an update had written it: the same kernel and root, so what is tried is
the boot side and the box's judgement, not a new root (the x86 boxes of the test suite try new roots).  Four
trials, each on its own copy of the card, two at a time (one vCPU each):

* watchdog: the watchdog's driver loads (the other trials keep it out, QEMU_ARGS): cmdline.txt's
  systemd.watchdog_sec= arms it in the trial's initrd, before the switch to the root.  qemu's model of it
  has no countdown: it resets the board the moment the watchdog is armed (a Pi counts down 10 s without a
  ping), so this trial shows that it is armed that early and that a reset ends on A; a hang itself is the
  simulation's (any reset clears the firmware's one-shot flag: tests/update/test_tryboot.py);
* unverified: slot B's cmdline.txt names a root hash its root slot does not have (a root written wrong): the
  root device never becomes ready and, at the device timeout, the initrd ends in the emergency shell, where
  the initrd's paladin-trial-fallback restarts the box plainly; autoboot.txt still names A;
* kept: the assessment passes and paladin-tryboot-commit makes B the default;
* failed: the trial's command line masks paladin.service (a version whose assistant never starts): the
  assessment gives up at its deadline (8 min), paladin-boot-failed restarts the box plainly (no tryboot flag
  at qemu's mailbox), and autoboot.txt still names A, which the firmware then boots.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.update.tryboot import Autoboot
from buildhost.debian import ensure_host_packages
from buildhost.steps import run, say
from tests.bench.raspi4b import BOOT_SLOT, DTB, FAILED, boot_files, card, cmdline, device_tree, flagged, qemu, until
from tests.support.pifirmware import choose
from tests.support.vm import card as card_drive, fat, fat_read, fat_write, partitions

TRIAL_SLOT = 3  # boot slot B
RESTART = "reboot: Restarting system"  # the kernel's last line on a restart asked for
FALLBACK = "PAL-adin: this trial boot cannot reach its root"  # paladin-trial-fallback.service's line
UNVERIFIED = r"module=verity op=verify-\w+ .*res=0"  # dm-verity's audit record of a block that failed
ARMED = "bcm2835_powermgt_write: WDOG"  # qemu's log (-d unimp) of the watchdog's timeout being set
BOOTED = "Kernel command line:"  # the kernel's first line on this console, once per start
WATCHDOG_DRIVER = "modprobe.blacklist=bcm2835_wdt"


@dataclass(frozen=True)
class Trial:
    ended: str  # the console line that ends it
    args: tuple[str, ...] = ()  # kernel arguments added
    unverified: bool = False  # slot B's cmdline.txt names a root hash its root does not have
    watchdog: bool = False  # the watchdog's driver loads


TRIALS = {
    # the board's reset: the kernel starts again (no -no-reboot)
    "watchdog": Trial(rf"{BOOTED}[\s\S]*({BOOTED}.*)", watchdog=True),
    # the root device never becomes ready (udev cannot read it): the initrd gives up at the device timeout,
    # 90 s on a Pi; QEMU_ARGS' 900 s is for finding the card under TCG, which this trial has done by then
    "unverified": Trial(rf"{RESTART}.*", args=("systemd.default_device_timeout_sec=420",), unverified=True),
    "kept": Trial(r"Finished paladin-tryboot-commit\.service|unit=paladin-tryboot-commit .*res=success"),
    "failed": Trial(rf"{RESTART}.*", args=("systemd.mask=paladin.service",)),
}
DEADLINE = 2700


def autoboot(sd: Path) -> bytes:
    """autoboot.txt, off the card's first partition (the PALADIN drive), as the firmware reads it."""
    return fat_read(card_drive(sd), "autoboot.txt")


def written(sd: Path) -> None:
    """Boot slot B made a copy of boot slot A, as an update writes a boot partition."""
    table = partitions(sd)
    source, target = table[BOOT_SLOT - 1], table[TRIAL_SLOT - 1]
    assert source["bytes"] == target["bytes"], (source, target)
    run(["dd", f"if={sd}", f"of={sd}", "bs=4M", "iflag=skip_bytes,count_bytes", "oflag=seek_bytes",
         f"skip={source['offset']}", f"seek={target['offset']}", f"count={source['bytes']}", "conv=notrunc",
         "status=none"])


def unverifiable(sd: Path) -> None:
    """Boot slot B's cmdline.txt with a root hash that its root slot does not have."""
    drive = fat(sd, TRIAL_SLOT)
    text = fat_read(drive, "cmdline.txt").decode()
    wrong = re.sub(r"roothash=[0-9a-f]+", "roothash=" + "0" * 64, text)
    assert wrong != text, text
    fat_write(drive, "cmdline.txt", wrong.encode())


def firmware_tree(dtb: Path, out: Path, partition: int) -> None:
    """The board's device tree as qemu needs it (raspi4b.device_tree), with what the firmware leaves in it
    for a trial: /chosen/bootloader tryboot = 1 and the partition it booted."""
    device_tree(dtb, out)
    run(["fdtput", "-c", out, "/chosen/bootloader"])
    for name, value in (("tryboot", 1), ("partition", partition)):
        run(["fdtput", "-t", "u", out, "/chosen/bootloader", name, str(value)])


def trial(name: str, raw: Path, work: Path, deadline_s: int) -> dict:
    """One trial on its own card: the firmware's choice, the boot, and autoboot.txt afterwards."""
    how = TRIALS[name]
    here = work / name
    here.mkdir(parents=True, exist_ok=True)
    sd = here / "sd.raw"
    card(raw, sd)
    written(sd)
    if how.unverified:
        unverifiable(sd)
    tried = choose(autoboot(sd), tryboot=True)  # after `reboot "0 tryboot"`, the flag the module set
    files = boot_files(sd, here, tried)
    firmware_tree(files[DTB], here / "firmware.dtb", tried)
    console, unimp = here / "console.log", here / "unimp.log"
    args = [arg for arg in cmdline(files["cmdline.txt"].read_text()).split()
            if not (how.watchdog and arg == WATCHDOG_DRIVER)]
    # the emergency shell ends the other trials; the unverified one's way out starts there
    stop = how.ended if how.unverified else f"{how.ended}|{FAILED}"
    started = time.monotonic()
    seen = until([qemu(), "-M", "raspi4b", "-display", "none", "-monitor", "none",
                  "-serial", f"file:{console}", "-d", "unimp", "-D", unimp, "-kernel", files["vmlinuz"],
                  "-dtb", here / "firmware.dtb", "-initrd", files["initrd"], "-append", " ".join([*args, *how.args]),
                  "-drive", f"if=sd,format=raw,file={sd}"], console, stop, deadline_s)
    after = autoboot(sd)
    sd.unlink()
    text = console.read_text(errors="replace")
    first = text.split(BOOTED)[1] if text.count(BOOTED) > 1 else text  # up to the board's reset, if any
    result = {"tried": tried, "ended": seen[seen.lastindex or 0].strip() if seen else None,
              "seconds": round(time.monotonic() - started), "autoboot": after.decode(errors="replace"),
              "next boot": choose(after, tryboot=False), "flag": flagged(unimp),
              "restarted": RESTART in first, "fallback said": FALLBACK in first,
              "root failed verity": bool(re.search(UNVERIFIED, first)),
              "root switched to": "Switching root." in first,
              "watchdog armed": unimp.exists() and ARMED in unimp.read_text(errors="replace")}
    say(f"{name}: {result}")
    return result


def fell_back(result: dict) -> bool:
    """autoboot.txt unchanged: A is still the default, and the firmware boots it next."""
    return result["autoboot"].encode() == Autoboot(BOOT_SLOT, TRIAL_SLOT).render() and result["next boot"] == BOOT_SLOT


def checks(results: dict[str, dict]) -> dict[str, bool]:
    found = {"the firmware's trials boot boot slot B": all(r["tried"] == TRIAL_SLOT for r in results.values())}
    if unverified := results.get("unverified"):
        found["unverified: the initrd's fallback restarted the box plainly, no tryboot flag"] = (
            unverified["ended"] == RESTART and unverified["root failed verity"]
            and unverified["fallback said"]
            and not unverified["root switched to"] and not unverified["flag"])
        found["unverified: autoboot.txt unchanged, A boots next"] = fell_back(unverified)
    if watchdog := results.get("watchdog"):
        found["watchdog: armed in the trial's initrd, then the board's reset (no restart, no flag)"] = (
            bool(watchdog["ended"]) and watchdog["ended"].startswith(BOOTED) and watchdog["watchdog armed"]
            and not watchdog["root switched to"] and not watchdog["restarted"] and not watchdog["flag"])
        found["watchdog: autoboot.txt unchanged, A boots next"] = fell_back(watchdog)
    if kept := results.get("kept"):
        found["kept: paladin-tryboot-commit ran after the assessment passed"] = (
            bool(kept["ended"]) and "paladin-tryboot-commit" in kept["ended"])
        found["kept: autoboot.txt makes B the default (and A the next trial)"] = (
            kept["autoboot"].encode() == Autoboot(TRIAL_SLOT, BOOT_SLOT).render() and kept["next boot"] == TRIAL_SLOT)
    if failed := results.get("failed"):
        found["failed: the box restarted plainly, no tryboot flag"] = (
            failed["ended"] == RESTART and not failed["flag"])
        found["failed: autoboot.txt unchanged, A boots next"] = fell_back(failed)
    return found


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--image", required=True, help="an image built by build.py image --arch arm64 --board rpi")
    top.add_argument("--json", help="also write the results to this file")
    top.add_argument("--keep", help="work in this directory and keep it (boot files, consoles, qemu's logs)")
    top.add_argument("--deadline", type=int, default=DEADLINE, help="seconds a trial may take (default %(default)s)")
    top.add_argument("--trial", action="append", choices=list(TRIALS), help="only this trial (repeatable)")
    args = top.parse_args()
    names = args.trial or list(TRIALS)
    started = time.monotonic()
    ensure_host_packages(["mtools", "device-tree-compiler"])
    qemu()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        with ThreadPoolExecutor(2) as pool:  # the host's two cores
            results = dict(zip(names, pool.map(lambda name: trial(name, Path(args.image), work, args.deadline),
                                               names)))
    found = checks(results)
    for what, ok in found.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"{sum(found.values())}/{len(found)} checks passed ({round(time.monotonic() - started)} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": args.image, "trials": results, "checks": found}, indent=1))
    raise SystemExit(0 if all(found.values()) else 1)


if __name__ == "__main__":
    main()
