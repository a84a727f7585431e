"""A Raspberry Pi's A/B boot through the firmware's tryboot: the updater's real code against a card of
FAT partitions (directories here) and a SIMULATED firmware choice (tests/support/pifirmware.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.update.progress import UpdateError
from appliance.update.tryboot import AUTOBOOT_LIMIT, Autoboot, Tryboot
from tests.support.pifirmware import Firmware, choose
from tests.support.writelog import states, writes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def card(tmp_path):
    """A card as flashed: autoboot.txt names boot partition 2 (A) by default and 3 (B) for a trial; the
    box booted A."""
    for number in (1, 2, 3):
        (tmp_path / f"card/p{number}").mkdir(parents=True)
    (tmp_path / "card/p2/config.txt").write_text("arm_64bit=1\n")
    firmware = Firmware(tmp_path / "card", tmp_path / "device-tree")
    (tmp_path / "module").mkdir()  # the image's tryboot module, loaded
    box = Tryboot(firmware.partition(1) / "autoboot.txt", tmp_path / "device-tree", tmp_path / "module")
    box.autoboot.write_bytes(Autoboot(2, 3).render())  # as the image is built
    assert firmware.boot() == 2
    return firmware, box


def updated(firmware: Firmware, box: Tryboot) -> None:
    """What install() does around writing the boot partition: no trial can reach partition 3 while it is
    written, and it is named for a trial only once complete."""
    box.write(Autoboot(box.booted(), box.booted()))
    assert firmware.boot(tryboot=True) == 2  # half-written or not, B is not tried
    (firmware.partition(3) / "config.txt").write_text("arm_64bit=1\n")
    box.write(Autoboot(box.booted(), 3))


@pytest.mark.unit
def test_autoboot_txt_is_what_the_documented_firmware_reads():
    text = Autoboot(2, 3).render()
    assert len(text) <= AUTOBOOT_LIMIT and Autoboot.parse(text) == Autoboot(2, 3)
    assert (choose(text, tryboot=False), choose(text, tryboot=True)) == (2, 3)
    with pytest.raises(UpdateError, match="not in the form this box writes"):
        Autoboot.parse(text.replace(b"tryboot_a_b=1", b"tryboot_a_b=0"))
    with pytest.raises(UpdateError, match="this box's are 2 and 3"):
        Autoboot(2, 12)


@pytest.mark.unit
def test_autoboot_txt_is_rewritten_in_place_or_not_at_all(card):
    """In place, so a FAT's allocation and directory never change (a rename there is no atomic switch)."""
    firmware, box = card
    before = os.stat(box.autoboot).st_ino
    box.write(Autoboot(2, 2))
    assert box.read() == Autoboot(2, 2) and os.stat(box.autoboot).st_ino == before
    assert sorted(p.name for p in firmware.partition(1).iterdir()) == ["autoboot.txt"]
    box.autoboot.write_bytes(Autoboot(2, 3).render() + b"# changed by hand\n")
    with pytest.raises(UpdateError, match="not the 64 this box writes"):
        box.write(Autoboot(2, 3))


@pytest.mark.unit
def test_a_trial_that_passes_is_kept_and_becomes_the_default(card):
    firmware, box = card
    updated(firmware, box)
    assert not box.trial() and box.refusal() is None
    assert firmware.boot(tryboot=True) == 3 and box.trial()
    assert box.refusal().startswith("this boot is a trial")
    box.commit()
    assert box.read() == Autoboot(3, 2) and not box.trial()  # still flagged until it reboots, but kept
    box.commit()  # again (the unit ran twice): nothing changes
    assert firmware.boot() == 3 and not box.trial()
    assert [firmware.boot(tryboot=flag) for flag in (False, True)] == [3, 2]


@pytest.mark.unit
def test_a_trial_that_fails_or_hangs_is_not_kept_and_the_next_boot_is_the_old_default(card):
    firmware, box = card
    updated(firmware, box)
    assert firmware.boot(tryboot=True) == 3
    # A failed assessment reboots (fall_back); a hang is reset by the watchdog; a power cut is a power
    # cut.  In each the firmware cleared its one-shot flag before starting, so the next start is plain.
    assert firmware.boot() == 2 and not box.trial()
    box.commit()  # as at every boot: a plain one has nothing to keep
    assert box.read() == Autoboot(2, 3)
    assert firmware.boot(tryboot=True) == 3
    box.autoboot.write_bytes(Autoboot(2, 2).render())  # changed by hand meanwhile: 3 is nobody's
    with pytest.raises(UpdateError, match="neither autoboot.txt's default"):
        box.commit()


@pytest.mark.unit
def test_a_bootloader_too_old_for_tryboot_is_named_with_what_to_do(card, tmp_path):
    old = Firmware(tmp_path / "card", tmp_path / "device-tree", soc="brcm,bcm2711", built=1_640_995_200)
    refusal = Tryboot(old.partition(1) / "autoboot.txt", tmp_path / "device-tree").refusal()
    assert "Raspberry Pi 4's bootloader is from 2022-01-01" in refusal and "2022-11-25" in refusal
    assert "Raspberry Pi Imager" in refusal
    (tmp_path / "device-tree/compatible").write_bytes(b"qemu,virt\0")
    assert "not a Raspberry Pi 4 or 5" in Tryboot(tmp_path / "x", tmp_path / "device-tree").refusal()


@pytest.mark.unit
def test_a_kernel_that_cannot_pass_the_tryboot_flag_is_refused_before_anything_is_written(card, tmp_path):
    firmware, box = card
    (tmp_path / "module").rmdir()
    assert "cannot pass the tryboot flag to the firmware" in box.refusal()
    assert "paladin_tryboot is not loaded" in box.refusal() and box.read() == Autoboot(2, 3)


COMMIT = ("from pathlib import Path; from appliance.update.tryboot import Tryboot; "
          "Tryboot(Path(sys.argv[1]), Path(sys.argv[2])).commit()")


@pytest.mark.system
@pytest.mark.parametrize("cut, kept", [("pwrite64:when=1", False), ("fsync:when=1", True)])
def test_the_commit_killed_at_each_of_its_steps_leaves_a_bootable_default_and_can_be_run_again(card, tmp_path, cut,
                                                                                               kept):
    """The process is killed at each system call of the commit (strace's fault injection): a process kill,
    not a power cut (bench `tryboot` cuts the power at each sector the kernel writes)."""
    firmware, box = card
    updated(firmware, box)
    assert firmware.boot(tryboot=True) == 3
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={cut.replace(':', ':signal=KILL:')}",
                             sys.executable, "-c", f"import sys; {COMMIT}", box.autoboot, tmp_path / "device-tree"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode != 0, f"the commit was not cut at {cut}: {killed.stderr}"
    state = box.read()
    assert state == (Autoboot(3, 2) if kept else Autoboot(2, 3))  # whole, old or new
    assert firmware.boot() == state.default and firmware.bootable(state.default)
    if not kept:  # the box is back on A, where the trial can be made again
        assert firmware.boot(tryboot=True) == 3
    box.commit()
    assert box.read() == Autoboot(3, 2) and firmware.boot() == 3


@pytest.mark.system
def test_a_write_log_replays_to_every_state_a_cut_can_leave(tmp_path):
    """tests/support/writelog.py against the log qemu's blklogwrites driver writes (qemu-io, as the tryboot
    benchmark's box writes through it)."""
    disk, log = tmp_path / "disk.img", tmp_path / "disk.log"
    disk.write_bytes(bytes(8192))
    before = tmp_path / "before.img"
    before.write_bytes(disk.read_bytes())
    log.touch()
    subprocess.run(["qemu-io", "--image-opts", f"driver=blklogwrites,log-sector-size=512,file.driver=file,"
                    f"file.filename={disk},log.driver=file,log.filename={log}",
                    "-c", "write -P 0xab 1024 1024", "-c", "flush", "-c", "write -P 0xcd 0 512"],
                   check=True, capture_output=True)
    size, logged = writes(log)
    assert size == 512 and [(w.sector, len(w.data)) if w else None for w in logged][:3] == [(2, 1024), None, (0, 512)]
    seen = [(applied, path.read_bytes()) for applied, path in states(before, log, tmp_path)]
    assert [applied for applied, _ in seen] == [0, 1, 2, 3]
    assert seen[0][1] == bytes(8192) and seen[1][1][1024:1536] == b"\xab" * 512 and seen[1][1][1536:2048] == bytes(512)
    assert seen[-1][1] == disk.read_bytes()  # all of it: the disk as qemu left it
