"""Release signing and the box's verification, with real python-tuf over real HTTP and real bundles.

The slot writing (systemd-sysupdate) and boot assessment run in qemu: tests/image/updates/test_update_image.py.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance import files
from appliance.layout import UpdateState
from appliance.update import assess, bundle as bundles, progress, slots, trust
from appliance.update.fetcher import fetch_release
from appliance.update.release import Box
from appliance.update.trust import publish
from appliance.update.verify import verified_release
from buildhost import release
from tests.support.fakes import fake_image

ROOM = {"root": 1 << 20, "verity": 1 << 20}


def fetch(source, state, *, arch="x86-64", running="1", room=ROOM, failed=frozenset(), board="uefi"):
    """What the updater fetches from `source` (a URL, a directory or a bundle file) and then verifies
    again from the fetcher's mirror, as the two halves do on the box."""
    record = progress.Progress(state.status, source=str(source))
    this_box = Box(arch, running, room, failed, board)
    work, trusted, offline = state.fetch, publish(state), Path(source).is_file()
    if offline:
        with open(source, "rb") as bundle:
            fetch_release(bundle, work, trusted, record, this_box)
    else:
        fetch_release(source, work, trusted, record, this_box)
    return verified_release(work.mirror, state, record, this_box, offline=offline)


@pytest.mark.unit
def test_online_release_is_verified_and_staged(served, update_state, repo):
    version, chosen = fetch(served, update_state)
    assert version == "2" and set(chosen) == {"root", "verity", "uki"}
    for info in chosen.values():
        staged = update_state.staging / Path(info.path).name
        assert hashlib.sha256(staged.read_bytes()).hexdigest() == info.hashes["sha256"]
    assert json.loads(update_state.status.read_text())["done"] == sum(i.length for i in chosen.values())


@pytest.mark.unit
def test_directory_and_bundle_sources(repo, update_state, tmp_path):
    assert fetch(str(repo.path), update_state)[0] == "2"
    bundle = repo.path / "bundles" / "paladin_2_x86-64.bundle"
    second = UpdateState(tmp_path / "second")
    second.root.mkdir()
    assert fetch(str(bundle), second)[0] == "2"


@pytest.mark.unit
def test_each_release_is_one_bundle_with_its_own_targets(repo, tmp_path):
    repo.release(fake_image(tmp_path / "images", "2026.11.26"))
    with (repo.path / "bundles" / "paladin_2026.11.26_x86-64.bundle").open("rb") as bundle:
        marker = bundles.open_bundle(bundle, tmp_path / "unpacked")
    assert marker["version"] == "2026.11.26"
    names = [p.name for p in (tmp_path / "unpacked/targets/x86-64").iterdir()]
    assert len(names) == 3 and all("paladin_2026.11.26" in n for n in names)


@pytest.mark.unit
def test_a_slot_image_is_released_up_to_its_zeros_and_the_box_writes_them(tmp_path, keys):
    image = fake_image(tmp_path / "images", "2", root_bytes=8 << 20)  # a MiB of data, then zeros, as an erofs
    root = next((tmp_path / "images").glob("*.root-x86-64.*.raw")).read_bytes()
    repository = release.Repository(tmp_path / "repo", keys)
    repository.release(image)
    stored = stored_target(repository, "root")
    signed = next(info.custom["paladin"] for info in repository.targets().signed.targets.values()
                  if info.custom["paladin"]["kind"] == "root")
    assert (signed["raw_length"], signed["slot_length"]) == (1 << 20, 8 << 20)
    assert gzip.decompress(stored.read_bytes()) == root[:1 << 20]
    assert signed["raw_sha256"] == hashlib.sha256(root[:1 << 20]).hexdigest()

    slot = tmp_path / "slot"  # what an older, larger release left, with the new bytes written over it
    slot.write_bytes(root[:1 << 20] + os.urandom(3 << 20) + bytes(3 << 20) + b"\xff" * (1 << 20))
    slots.clear(slot, signed["raw_length"], signed["slot_length"])
    assert slot.read_bytes() == root
    with pytest.raises(progress.UpdateError, match="shorter than"):
        slots.clear(slot, signed["raw_length"], signed["slot_length"] + 4096)


def refused(source, state, match, **kwargs):
    with pytest.raises((progress.UpdateError, bundles.BundleError)) as err:
        fetch(source, state, **kwargs)
    assert match in str(err.value), str(err.value)
    assert not any(state.staging.glob("*")), "nothing unverified may stay staged"
    assert not any(state.fetch.root.glob("*/targets/*")), "nor mirrored"


def stored_target(repo, kind):
    return next(p for p in (repo.path / "targets/x86-64").iterdir() if f".{kind}." in p.name or
                (kind == "uki" and p.name.endswith(".efi")))


@pytest.mark.unit
def test_tampered_target(served, update_state, repo):
    path = stored_target(repo, "root")
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    refused(served, update_state, "hash")


@pytest.mark.unit
def test_truncated_target(served, update_state, repo):
    path = stored_target(repo, "root")
    path.write_bytes(path.read_bytes()[:-10])
    refused(served, update_state, "Length")


@pytest.mark.unit
def test_bad_signature(served, update_state, repo):
    path = repo.metadata / "timestamp.json"
    metadata = json.loads(path.read_text())
    sig = metadata["signatures"][0]["sig"]
    metadata["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    path.write_text(json.dumps(metadata))
    refused(served, update_state, "UnsignedMetadataError")


@pytest.mark.unit
def test_signed_by_an_unknown_key(tmp_path, update_state, monkeypatch):
    other_keys = tmp_path / "other-keys"
    release.keys_init(other_keys)
    images = tmp_path / "other-images"
    images.mkdir()
    other = release.Repository(tmp_path / "other-repo", other_keys)
    other.release(fake_image(images, "2"))
    refused(str(other.path), update_state, "UnsignedMetadataError")


@pytest.mark.unit
def test_downgrade(served, update_state):
    refused(served, update_state, "refusing a downgrade", running="3")


@pytest.mark.unit
def test_same_version_is_not_reinstalled(served, update_state):
    refused(served, update_state, "already up to date", running="2")


@pytest.mark.unit
def test_expired_timestamp(served, update_state, repo):
    repo.publish(expiry_days={"timestamp": -1})
    refused(served, update_state, "ExpiredMetadataError")


@pytest.mark.unit
def test_an_offline_bundle_stays_installable_after_its_timestamp_expired(repo, update_state, tmp_path):
    """Carried to the box long after release: judged as of its own timestamp's expiry."""
    bundle = repo.release(fake_image(tmp_path / "images", "3"), expiry_days={"timestamp": -30, "snapshot": -29})
    assert fetch(str(bundle), update_state)[0] == "3"


@pytest.mark.unit
def test_an_offline_bundle_is_still_judged_as_of_its_timestamp(repo, update_state, tmp_path):
    """Metadata that had expired when the bundle's own timestamp was still valid is refused."""
    bundle = repo.release(fake_image(tmp_path / "images", "3"), expiry_days={"timestamp": -1, "targets": -2})
    refused(str(bundle), update_state, "ExpiredMetadataError")


@pytest.mark.unit
def test_the_daily_check_does_not_take_a_release_that_failed_here_again(served, update_state):
    update_state.attempts.write_text(json.dumps([
        {"version": "2", "result": "failed", "reason": "paladin.service failed"},
        {"version": "1", "result": "failed", "reason": "a power cut"}, {"version": "1", "result": "good"}]))
    assert assess.failed_versions(update_state) == {"2"}
    refused(served, update_state, "release 2 failed its boot assessment on this box", failed=assess.failed_versions(update_state))
    assert fetch(served, update_state)[0] == "2"  # asked for by hand, it is tried again


@pytest.mark.unit
def test_wrong_arch(served, update_state):
    refused(served, update_state, "no release for this box's architecture arm64 (it has: x86-64 2)", arch="arm64")


@pytest.mark.unit
def test_a_raspberry_pi_takes_its_own_releases_and_a_uefi_arm64_box_the_others(tmp_path, keys, update_state):
    images = tmp_path / "images"
    repository = release.Repository(tmp_path / "arm64", keys)
    repository.release(fake_image(images / "uefi", "2", "arm64", machine=0xAA64))
    bundle = repository.release(fake_image(images / "rpi", "3", "arm64", board="rpi"))
    assert bundle.name == "paladin_3_arm64-rpi.bundle"
    pi = {"arch": "arm64", "board": "rpi", "room": ROOM | {"boot": 1 << 20}}
    version, chosen = fetch(str(repository.path), update_state, **pi)
    assert version == "3" and set(chosen) == {"root", "verity", "boot"}
    assert all(info.path.startswith("arm64-rpi/") for info in chosen.values())
    assert (update_state.staging / Path(chosen["boot"].path).name).read_bytes().startswith(b"\x1f\x8b")  # gzip
    shutil.rmtree(update_state.staging)
    version, chosen = fetch(str(repository.path), update_state, arch="arm64")  # never the Pi's 3
    assert version == "2" and set(chosen) == {"root", "verity", "uki"}
    shutil.rmtree(update_state.staging)
    refused(str(bundle), update_state, "release 3's boot image (4100 bytes) is larger than the slot (0 bytes)",
            **pi | {"room": ROOM})
    refused(str(repository.path), update_state, "no release for this box's architecture x86-64 (it has: arm64 2, "
            "arm64-rpi 3)")


@pytest.mark.unit
def test_uki_for_another_arch(tmp_path, keys, update_state):
    images = tmp_path / "arm-images"
    images.mkdir()
    repository = release.Repository(tmp_path / "mislabelled", keys)
    repository.release(fake_image(images, "2", machine=0xAA64))  # an arm64 UKI published as x86-64
    refused(str(repository.path), update_state, "UKI is built for arm64")


@pytest.mark.unit
def test_replayed_old_snapshot(served, update_state, repo, tmp_path):
    old = tmp_path / "old-metadata"
    shutil.copytree(repo.metadata, old)
    repo.publish()  # a newer snapshot and timestamp, which the box then sees
    fetch(served, update_state)
    shutil.rmtree(update_state.staging)  # as install() does once the release is written
    shutil.rmtree(repo.metadata)
    shutil.copytree(old, repo.metadata)  # a mirror replays the older, still validly signed set
    refused(served, update_state, "BadVersionNumberError")


@pytest.mark.unit
def test_target_larger_than_the_slot(served, update_state):
    refused(served, update_state, "larger than the slot", room={"root": 1000, "verity": 1 << 20})


@pytest.mark.unit
@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100, None], ids=["empty", "junk", "tar-without-marker"])
def test_not_a_bundle(update_state, tmp_path, content):
    bundle = tmp_path / "upload.bundle"
    if content is None:
        with tarfile.open(bundle, "w") as tar:
            tar.add(__file__, arcname="metadata/root.json")
    else:
        bundle.write_bytes(content)
    refused(str(bundle), update_state, "not a PAL-adin update bundle")


@pytest.mark.unit
def test_bundle_with_a_path_escape(update_state, tmp_path, repo):
    bundle = tmp_path / "evil.bundle"
    with tarfile.open(bundle, "w") as tar:
        for name in (bundles.BUNDLE_MARKER, "../../etc/passwd"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    refused(str(bundle), update_state, "unexpected member '../../etc/passwd'")


@pytest.mark.unit
def test_key_rotation_is_followed(served, update_state, repo, keys, tmp_path):
    fetch(served, update_state)  # the box trusts root 1
    release.keys_rotate(keys, "targets")
    release.keys_rotate(keys, "root")
    repo.release(fake_image(tmp_path / "images", "3"))
    version, _ = fetch(served, update_state, running="2")
    assert version == "3"
    assert json.loads((update_state.metadata / "root.json").read_text())["signed"]["version"] == 3


@pytest.mark.unit
@pytest.mark.parametrize("damage", [b"", b'{"signed": '], ids=["empty", "torn"])
def test_a_stored_root_torn_by_a_power_cut_falls_back_to_the_image_root(served, update_state, damage):
    """ext4 can leave a renamed but unsynced file empty after a power cut; the box must still update."""
    update_state.metadata.mkdir()
    (update_state.metadata / "root.json").write_bytes(damage)
    assert fetch(served, update_state)[0] == "2"


@pytest.mark.system
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_bundle_larger_than_the_free_space_is_refused_before_unpacking(repo, keys, tmp_path, monkeypatch):
    monkeypatch.setattr(trust, "TRUSTED_ROOT", keys / "root.json")
    state = UpdateState(tmp_path / "small")
    state.root.mkdir()
    bundle = repo.path / "bundles" / "paladin_2_x86-64.bundle"
    room = files.RESERVE_BYTES + 2 * bundle.stat().st_size  # unpacking and staging need three times its size
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", state.root], check=True)
    try:
        refused(str(bundle), state, "not enough space on the data partition")
        assert not [p for p in state.root.rglob("*") if p.name in ("bundle", "mirror", "staging")]  # nothing unpacked
    finally:
        subprocess.run(["umount", "-l", state.root], check=True)


@pytest.mark.unit
def test_an_oversized_extended_tar_header_is_refused_unread(update_state, tmp_path):
    bundle = tmp_path / "pax.bundle"
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(bundles.BUNDLE_MARKER)
        info.size, info.pax_headers = 2, {"comment": "x" * 200_000}
        tar.addfile(info, io.BytesIO(b"{}"))
    refused(str(bundle), update_state, "extended tar header")


class Drip(SimpleHTTPRequestHandler):
    """A mirror that answers, then sends one byte every 0.2 s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"{")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the box hung up, as it should

    def log_message(self, *args):
        pass


@pytest.mark.unit
def test_a_mirror_that_drips_is_cut_off(update_state, monkeypatch):
    monkeypatch.setattr(trust, "GRACE_SECONDS", 1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        refused(f"http://127.0.0.1:{server.server_address[1]}", update_state, "bytes/s a mirror must keep up")
        assert time.monotonic() - started < 10  # not the 20 s the drip would take, nor forever
    finally:
        server.shutdown()


@pytest.mark.unit
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=512, max_size=4096), flips=st.lists(st.tuples(st.integers(0, 4095),
                                                                            st.integers(1, 255)), max_size=8))
def test_no_damaged_bundle_gets_past_with_anything_but_a_bundle_error(tmp_path_factory, junk, flips):
    """Random files, and a real bundle's headers with random bytes flipped: refused as bundles, never a
    crash (one random 100 KB upload once stopped the updater with a ValueError from a seek)."""
    work = tmp_path_factory.mktemp("damaged")
    real = bytearray(release_bundle(work))
    for offset, mask in flips:
        real[offset % len(real)] ^= mask
    for data in (junk, bytes(real)):
        dest = work / f"out-{len(list(work.iterdir()))}"
        dest.mkdir()
        try:
            bundles.open_bundle(io.BytesIO(data), dest)
        except bundles.BundleError:
            pass


@pytest.mark.unit
def test_a_member_time_out_of_range_is_a_damaged_bundle(tmp_path):
    """What the fuzzing above once found: one flipped byte made a pax header's mtime a float too large for
    the clock (1E999...), and extracting it raised an OverflowError instead of a bundle error."""
    real = release_bundle(tmp_path)
    start = real.index(b" mtime=") + len(b" mtime=")
    end = real.index(b"\n", start)
    damaged = real[:start] + b"1E" + b"9" * (end - start - 2) + real[end:]
    (tmp_path / "out").mkdir()
    with pytest.raises(bundles.BundleError, match="damaged member"):
        bundles.open_bundle(io.BytesIO(damaged), tmp_path / "out")


def release_bundle(work) -> bytes:
    """A small but real bundle (made once per test run)."""
    global _BUNDLE
    if "_BUNDLE" not in globals():
        keys = work / "keys"
        release.keys_init(keys)
        repository = release.Repository(work / "repo", keys)
        _BUNDLE = repository.release(fake_image(work / "images", "2", root_bytes=2048)).read_bytes()
    return _BUNDLE
