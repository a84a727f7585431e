"""The Raspberry Pi image's last step (`build.py image --board rpi`), after mkosi: the boot partition gets the
initrd and cmdline.txt.  The command line carries the dm-verity root hash, known only once systemd-repart has
made the verity partition, so mkosi (image/mkosi.profiles/rpi) leaves cmdline.txt as a template on the FAT.
The initrd is mkosi's default one with INITRD_TREE appended (mkosi's default initrd takes packages, not
files).  mtools writes into the image file: no mount, no loop device."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from appliance import facts

from . import ROOT
from .steps import StepError, run

HOST_PACKAGES = ["mtools", "dosfstools", "fdisk", "cpio"]
# What the Pi's initrd adds to mkosi's: the fallback of a trial that cannot reach its root.
INITRD_TREE = ROOT / "image/mkosi.profiles/rpi/initrd"
AUTOBOOT_MAX = 512  # the firmware reads only the first 512 bytes of autoboot.txt
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def partitions(raw: Path) -> tuple[int, list[dict]]:
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    return table.get("sectorsize", 512), table["partitions"]


def roothash(data: dict, verity: dict) -> str:
    """systemd-repart derives a slot's PARTUUIDs from its root hash: data = first 128 bits, hash = last 128."""
    return (data["uuid"] + verity["uuid"]).replace("-", "").lower()


def fat(raw: Path, offset: int) -> str:
    return f"{raw}@@{offset}"


def append_archive(initrd: Path, tree: Path, out: Path) -> None:
    """`initrd` with `tree` appended as one more cpio archive, written to `out`: the kernel unpacks each
    archive in turn, a later one's files over an earlier one's."""
    names = sorted(str(path.relative_to(tree)) for path in tree.rglob("*"))
    archive = out.with_name(out.name + ".cpio")
    try:
        run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet", "-O", archive], cwd=tree,
            stdin="\n".join(names) + "\n")
        data = initrd.read_bytes()
        out.write_bytes(data + bytes(-len(data) % 512) + archive.read_bytes())  # zeros between archives are skipped
    finally:
        archive.unlink(missing_ok=True)


def mtools(*argv) -> str:
    return run(list(argv), env=MTOOLS_ENV, capture=True, hint="mtools reads the FAT inside the image file")


def finish_boot_partition(raw: Path, stem: Path, version: str) -> dict:
    """Put the initrd (INITRD_TREE appended) and the completed cmdline.txt on boot slot A; check autoboot.txt;
    write the boot partition beside the other split artifacts (`STEM.boot.PARTUUID.raw`, a release's boot
    target)."""
    sector, parts = partitions(raw)
    by_label = {p.get("name"): p for p in parts}
    root_label = facts.slot_label(version, "root")
    try:
        data, verity = by_label[root_label], by_label[facts.slot_label(version, "verity")]
        boot, autoboot = by_label[facts.slot_label(version, "boot")], by_label[facts.CARD_LABEL]
    except KeyError as err:
        raise StepError(f"{raw} has no partition labelled {err}", "see image/mkosi.profiles/rpi/mkosi.repart")
    initrd = Path(f"{stem}.initrd")
    if not initrd.is_file():
        raise StepError(f"mkosi wrote no {initrd}", "SplitArtifacts= must name initrd (mkosi.profiles/rpi)")
    hash_ = roothash(data, verity)
    image = fat(raw, boot["start"] * sector)
    template = mtools("mtype", "-i", image, "::cmdline.txt")
    if "@ROOTHASH@" not in template:
        raise StepError("cmdline.txt on the boot partition has no @ROOTHASH@", "it was completed before?")
    append_archive(initrd, INITRD_TREE, initrd)
    cmdline = template.replace("@ROOTHASH@", hash_).replace("@ROOTLABEL@", root_label).strip() + "\n"
    local = Path(f"{stem}.cmdline.txt")
    local.write_text(cmdline)
    mtools("mcopy", "-o", "-i", image, local, "::cmdline.txt")
    mtools("mcopy", "-o", "-i", image, initrd, "::initrd")
    autoboot_txt = mtools("mtype", "-i", fat(raw, autoboot["start"] * sector), "::autoboot.txt")
    if len(autoboot_txt.encode()) > AUTOBOOT_MAX:
        raise StepError(f"autoboot.txt is {len(autoboot_txt.encode())} bytes: the firmware reads {AUTOBOOT_MAX}")
    split = Path(f"{stem}.boot.{boot['uuid'].lower()}.raw")  # named as mkosi names the split root
    run(["dd", f"if={raw}", f"of={split}", f"bs={sector}", f"skip={boot['start']}", f"count={boot['size']}",
         "status=none"])
    return {"roothash": hash_, "cmdline": cmdline.strip(), "boot_partition": str(split)}
