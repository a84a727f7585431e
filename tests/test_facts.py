"""Where a file in image/, overlay/ or units/ must repeat a fact of appliance/facts.py, it agrees."""

import configparser
import re
import tomllib
from pathlib import Path

import pytest

from appliance import channel, facts
from appliance.layout import DataDir, FirewallState, UpdateState
from buildhost import ROOT

pytestmark = pytest.mark.unit


def ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(re.sub(r"^#.*$", "", path.read_text(), flags=re.M))
    return parser


def partitions(directory: Path) -> list[dict]:
    return [dict(ini(p)["Partition"]) for p in sorted(directory.glob("*.conf"))]


def test_first_boot_repart_matches_the_image_partitions_in_order():
    built, grown = partitions(ROOT / "image/mkosi.repart"), partitions(ROOT / "overlay/usr/lib/repart.d")
    assert [p["Type"] for p in built] == [p["Type"] for p in grown]
    assert [p.name for p in sorted((ROOT / "image/mkosi.repart").glob("*.conf"))] == \
        [p.name for p in sorted((ROOT / "overlay/usr/lib/repart.d").glob("*.conf"))]
    assert built[-1]["Label"] == grown[-1]["Label"] == facts.DATA_LABEL
    card = next(p for p in built if p.get("Label") == facts.CARD_LABEL)
    assert card["Type"] == facts.CARD_TYPE and card["Format"] == "vfat"


def test_slot_labels_are_the_ones_the_updater_reads():
    labels = [p.get("Label") for p in partitions(ROOT / "image/mkosi.repart")]
    assert labels[1:5] == [facts.slot_label("%A", "root"), facts.slot_label("%A", "verity"),
                           facts.EMPTY_SLOT, facts.EMPTY_SLOT]


def test_sysupdate_transfers_use_the_release_names():
    transfers = {p.stem: ini(p) for tree in ("overlay", "image/mkosi.profiles/rpi/extra")
                 for p in (ROOT / tree / "usr/lib/paladin-update").glob("*/*.transfer")}
    staging = str(UpdateState().staging)
    for kind, name in (("root", "50-root"), ("verity", "60-verity"), ("boot", "80-boot")):
        transfer = transfers[name]
        assert transfer["Source"]["Path"] == staging
        assert transfer["Source"]["MatchPattern"] == facts.target_name("x", kind, "@v", "@u").split("/")[1]
        assert transfer["Target"]["MatchPattern"] == facts.slot_label("@v", kind)
    assert transfers["80-boot"]["Target"]["MatchPartitionType"] == "esp"  # facts.BOOT_SLOT_TYPE
    uki = transfers["70-uki"]
    assert uki["Source"]["MatchPattern"] == facts.target_name("x", "uki", "@v").split("/")[1]
    assert uki["Target"]["MatchPattern"].split()[-1] == f"{facts.uki_name('@v')}.efi"


@pytest.mark.parametrize("helper", sorted(channel.HELPERS))
def test_each_helpers_path_unit_watches_the_request_channel(helper):
    unit = "paladin-update.path" if helper == "update" else f"paladin-{helper}-request.path"
    assert ini(ROOT / "units" / unit)["Path"]["PathExists"] == str(channel.inbox(Path(facts.DATA_DIR)) / f"{helper}.json")


def test_the_fetchers_sandbox_shows_it_its_work_directory_and_the_upload_only():
    service = ini(ROOT / "units/paladin-update-fetch.service")["Service"]
    data = DataDir()
    assert service["TemporaryFileSystem"] == str(data.root)
    assert service["BindPaths"] == str(data.update.root)
    assert service["BindReadOnlyPaths"] == "-" + str(channel.attachment(data.root, "update", "bundle"))
    assert service["Environment"] == f"TMPDIR={data.update.tmp}"
    tmpfiles = (ROOT / "overlay/usr/lib/tmpfiles.d/paladin.conf").read_text()
    assert f"d {data.update.root} " in tmpfiles  # its tmp/ the fetcher makes before python-tuf writes there


def test_the_firewall_state_is_where_sshd_and_its_unit_look():
    state = FirewallState()
    sshd = (ROOT / "overlay/etc/ssh/sshd_config.d/50-paladin.conf").read_text()
    assert f"AuthorizedKeysFile {state.authorized_keys}" in sshd and f"HostKey {state.host_key}" in sshd
    assert f"ConditionPathExists={state.authorized_keys}" in \
        (ROOT / "overlay/usr/lib/systemd/system/ssh.service.d/paladin.conf").read_text()
    assert f"StateDirectory={state.root.name}" in (ROOT / "units/paladin-firewall.service").read_text()


def test_image_id_home_and_architectures():
    assert f"ImageId={facts.IMAGE_ID}" in (ROOT / "image/mkosi.conf").read_text()
    assert str(facts.DATA_DIR) in (ROOT / "overlay/usr/lib/sysusers.d/paladin.conf").read_text()
    assert f"The owner's choices live in {DataDir().owner_config}." in (ROOT / "overlay/etc/paladin/paladin.yaml").read_text()
    matched = {ini(p)["Match"]["Architecture"] for p in (ROOT / "image/mkosi.conf.d").glob("*.conf")}
    assert matched == set(facts.ARCHES)


def test_versions_are_dotted_numbers():
    assert facts.version_key("2026.11.26") == (2026, 11, 26)
    for bad in ("1_2", "1+3", "v1", "", "1..2"):
        with pytest.raises(ValueError, match="dotted numbers"):
            facts.version_key(bad)


def test_the_box_advertises_the_https_port_and_its_console_shows_the_first_boot_notice():
    from appliance import firstboot

    advertised = re.search(r"<port>(\d+)</port>", (ROOT / "overlay/etc/avahi/services/paladin.service").read_text())
    assert int(advertised.group(1)) == facts.HTTPS_PORT
    issue = ROOT / "overlay/etc/issue.d/50-paladin.issue"
    assert issue.is_symlink() and Path(issue.readlink()) == firstboot.ISSUE
    unit = ini(ROOT / "units/paladin-firstboot.service")["Service"]
    assert Path("/run", unit["RuntimeDirectory"]) == firstboot.ISSUE.parent


def test_the_governors_user_state_and_socket_are_where_its_unit_puts_them():
    unit = ini(ROOT / "units/paladin-governor.service")["Service"]
    assert unit["User"] == facts.GOVERNOR_USER and f"u {facts.GOVERNOR_USER} " in \
        (ROOT / "overlay/usr/lib/sysusers.d/paladin.conf").read_text()
    assert unit["StateDirectory"] == Path(facts.GOVERNOR_STATE).name and Path(facts.GOVERNOR_STATE).parent == Path("/var/lib")
    assert Path(facts.GOVERNOR_SOCKET).parent == Path("/run") / unit["RuntimeDirectory"]
    assert f"--client-user {facts.SERVICE_USER}" in unit["ExecStart"]


def test_the_paladin_drive_is_mounted_where_its_units_read_it_and_hands_the_code_over_where_first_boot_looks():
    fstab = [line.split() for line in (ROOT / "overlay/etc/fstab").read_text().splitlines()
             if line and not line.startswith("#")]
    assert [f"PARTLABEL={facts.CARD_LABEL}", str(facts.CARD_MOUNT), "vfat"] in [line[:3] for line in fstab]
    card = ini(ROOT / "units/paladin-card.service")
    assert card["Unit"]["ConditionPathExists"] == f"/dev/disk/by-partlabel/{facts.CARD_LABEL}"
    assert card["Service"]["ReadWritePaths"] == f"-{facts.CARD_MOUNT}"
    assert Path(facts.CARD_HANDED).parent == Path("/run") / card["Service"]["RuntimeDirectory"]
    assert card["Service"]["Group"] == facts.SERVICE_USER
    firstboot = ini(ROOT / "units/paladin-firstboot.service")["Service"]
    assert firstboot["ReadWritePaths"] == f"-{Path(facts.CARD_HANDED).parent}"
    assert firstboot["Group"] == facts.SERVICE_USER


def test_every_program_the_package_installs_is_on_the_image_s_path():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    linked = re.findall(r"^ln -sf /usr/lib/paladin/bin/(\S+) /usr/bin/(\S+)$",
                        (ROOT / "image/mkosi.postinst.chroot").read_text(), flags=re.M)
    assert sorted(scripts) == sorted(source for source, name in linked if source == name)


RPI = ROOT / "image/mkosi.profiles/rpi"


def test_the_raspberry_pi_image_boots_through_tryboot_from_the_autoboot_txt_the_updater_writes():
    from appliance.update.loader import LOADERS
    from appliance.update.tryboot import Autoboot

    assert (RPI / "extra/usr/lib/paladin-boot/autoboot/autoboot.txt").read_bytes() == Autoboot(2, 3).render()
    assert (RPI / "extra/usr/lib/paladin-update/loader").read_text().strip() in LOADERS
    built, grown = partitions(RPI / "mkosi.repart"), partitions(RPI / "extra/usr/lib/repart.d")
    grown += [p for p in partitions(ROOT / "overlay/usr/lib/repart.d") if p["Type"] not in ("esp", facts.CARD_TYPE)]
    assert [p["Type"].lower() for p in built] == [p["Type"].lower() for p in grown]
    assert built[0]["Label"] == facts.CARD_LABEL and built[0]["Type"].lower() == facts.CARD_TYPE
    assert [p["Label"] for p in built[1:3]] == [facts.slot_label("%A", "boot"), facts.EMPTY_SLOT]
    assert all(p["Type"] == "esp" and facts.BOOT_SLOT_TYPE == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" for p in built[1:3])
    # Only the Pi keeps its trials itself; on a UEFI box the unit would pull the assessment into every boot.
    kept = "enable paladin-tryboot-commit.service"
    assert kept in (RPI / "extra/usr/lib/systemd/system-preset/20-paladin-rpi.preset").read_text().splitlines()
    assert kept not in (ROOT / "overlay/usr/lib/systemd/system-preset/10-paladin.preset").read_text()
