"""Signed A/B updates on a booted box (qemu, TCG): online and bundle installs, refusals, automatic
rollback of a version that fails its boot assessment, and power cuts in every phase.

Three images are built (v1; v2; v3 whose assistant cannot start) and released with `build.py release`
to a repository served over HTTP from the host (10.0.2.2 inside qemu).  Box A goes v1 -> refusals ->
v2 (online) -> v3 -> back to v2 by itself.  Box B takes v2 from the bundle while its power is cut
during the download, the write, the UKI install and the first boot.  Boots are few and shared.

The two boxes run at once: box B in a thread from the image layer's first test on
(tests/support/update_boxes.py), box A as this module's class; each is shut down when its last step is
done.  Only v3 and the update boxes carry test-only settings, none of them in the shipped image: v3's
assistant is not restarted (its extra tree), and the governor does not start in the update boxes (a
credential drop-in), whose in-image checks are the shared box's (tests/image/box/).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buildhost import release
from tests.support.fakes import fake_image
from tests.support.vm import release as release_image
from tests.support.update_boxes import update_box
from tests.support.vm import (conversation_intact, partition_digest, request_update, update_status, upload_bundle,
                              wait_blessed, wait_down, wait_update, write_conversation)

pytestmark = pytest.mark.image


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(build_image, image_builds, release_keys, tmp_path_factory):
    work = tmp_path_factory.mktemp("updates")
    images = {version: build_image(version) for version in ("1", "2", "3")}  # v2 released as it was built
    www = image_builds.repository.parent
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"images": images, "www": www, "repo": release.Repository(www / "repo", release_keys),
           "keys": release_keys, "url": f"http://10.0.2.2:{server.server_address[1]}", "work": work}
    server.shutdown()


@pytest.fixture(scope="class")
def box_a(world):
    vm = update_box(world["images"]["1"], world["work"] / "box-a")
    vm.start()
    vm.wait_health(version="1")
    with vm.client() as client:
        world["conversation_a"] = write_conversation(client)
    yield vm
    vm.close()


def variants(world) -> dict[str, str]:
    """Bad repositories, each next to the good one: {directory: the error the box must give}.

    They are derived from the real repository in order, so their metadata versions only grow, as a
    box that sees them one after another requires; the good repository ends up newest.
    """
    www, repo, work = world["www"], world["repo"], world["work"]
    fakes = work / "fake-images"

    def copy(name: str) -> Path:
        shutil.copytree(repo.path, www / name, copy_function=os.link, ignore=shutil.ignore_patterns("bundles"))
        return www / name

    def published(name: str, change=None, expiry=None) -> None:
        targets = repo.targets()
        kept = dict(targets.signed.targets)
        if change:
            change(targets)
        repo.publish(targets, expiry)
        copy(name)
        restored = repo.targets()
        restored.signed.targets = kept
        repo.publish(restored)

    def only(version: str, arch: str = "x86-64", root_bytes: int = 4096):
        def change(targets):
            targets.signed.targets.clear()
            image = fake_image(fakes / f"{version}-{arch}-{root_bytes}", version, arch, root_bytes=root_bytes)
            staged = release.Repository(work / f"fake-repo-{version}-{arch}", world["keys"])
            staged.release(image)
            for name, info in staged.targets().signed.targets.items():
                stored = f"{Path(name).parent}/{info.hashes['sha256']}.{Path(name).name}"
                (repo.targets_dir / stored).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(staged.targets_dir / stored, repo.targets_dir / stored)
                targets.signed.targets[name] = info
        return change

    expected = {}
    bad = copy("bad-signature")
    timestamp = json.loads((bad / "metadata/timestamp.json").read_text())
    timestamp["signatures"][0]["sig"] = "00" * 64
    (bad / "metadata/timestamp.json").unlink()
    (bad / "metadata/timestamp.json").write_text(json.dumps(timestamp))
    expected["bad-signature"] = "UnsignedMetadataError"

    other_keys = work / "other-keys"
    release.keys_init(other_keys)
    release.Repository(www / "unknown-key", other_keys).release(fake_image(fakes / "unknown-key", "2"))
    expected["unknown-key"] = "UnsignedMetadataError"

    for name, damage in (("tampered", lambda b: b[:4096] + bytes([b[4096] ^ 1]) + b[4097:]),
                         ("truncated", lambda b: b[:-4096])):
        target = next((copy(name) / "targets/x86-64").glob("*.verity.raw.gz"))
        data = target.read_bytes()
        target.unlink()  # a hard link to the good repository's file
        target.write_bytes(damage(data))
    expected["tampered"] = "LengthOrHashMismatchError"
    expected["truncated"] = "LengthOrHashMismatchError"

    published("downgrade", only("0.9"))
    expected["downgrade"] = "refusing a downgrade: the repository's newest release is 0.9, this box runs 1"
    published("wrong-arch", only("2", "arm64"))
    expected["wrong-arch"] = "no release for this box's architecture x86-64 (it has: arm64 2)"
    published("too-large", only("2", root_bytes=1400 * 2**20))  # the slots hold 1280 MiB
    expected["too-large"] = "larger than the slot"
    published("expired", expiry={"timestamp": -1})
    expected["expired"] = "ExpiredMetadataError"
    return expected


class TestBoxA:
    """v1 -> refusals -> v2 online -> a replayed snapshot refused -> v3 rolls back to v2."""

    def test_refusals_leave_the_running_slot_untouched(self, world, box_a):
        """Each bad source gets a specific error; slot A (root and verity) stays byte-identical."""
        expected = variants(world)
        before = partition_digest(box_a.disk, 2), partition_digest(box_a.disk, 3)
        errors = {}
        with box_a.client() as client:
            for name, message in expected.items():
                since = request_update(client, f"{world['url']}/{name}", reboot=False)
                errors[name] = wait_update(client, since)["update"]
            junk = world["work"] / "junk.bundle"
            junk.write_bytes(os.urandom(100_000))
            since = upload_bundle(client, junk, reboot=False)
            errors["not-a-bundle"] = wait_update(client, since)["update"]
            expected["not-a-bundle"] = "not a PAL-adin update bundle"
            assert update_status(client)["running"] == "1"
        for name, message in expected.items():
            assert errors[name]["phase"] == "failed" and message in errors[name]["error"], (name, errors[name])
        assert (partition_digest(box_a.disk, 2), partition_digest(box_a.disk, 3)) == before

    def test_online_update_to_v2_keeps_v1_in_the_other_slot(self, world, box_a):
        with box_a.client() as client:
            since = request_update(client, f"{world['url']}/repo", reboot=True)
            done = wait_update(client, since)
            assert done["update"]["phase"] in ("installed", "rebooting"), done
        assert box_a.wait_health(version="2")["status"] == "ok"
        status = wait_blessed(box_a, "2")
        labels = {s["label"]: s for s in status["slots"] if s["kind"] == "root"}
        assert labels["paladin_2"]["booted"] and not labels["paladin_1"]["booted"]
        assert {k["file"] for k in status["kernels"]} == {"paladin_1.efi", "paladin_2.efi"}
        with box_a.client() as client:
            assert conversation_intact(client, world["conversation_a"])

    def test_a_replayed_old_snapshot_is_refused(self, world, box_a):
        """A new timestamp, but the snapshot it names replaced by the first, validly signed one."""
        world["repo"].publish()  # a snapshot the box has not seen yet, so it must fetch it
        replay = world["www"] / "replayed"
        shutil.copytree(world["repo"].path, replay, copy_function=os.link, ignore=shutil.ignore_patterns("bundles"))
        current = json.loads((replay / "metadata/timestamp.json").read_text())["signed"]["meta"]["snapshot.json"]
        (replay / f"metadata/{current['version']}.snapshot.json").unlink()
        shutil.copy(replay / "metadata/1.snapshot.json", replay / f"metadata/{current['version']}.snapshot.json")
        with box_a.client() as client:
            since = request_update(client, f"{world['url']}/replayed", reboot=False)
            refused = wait_update(client, since)["update"]
        assert refused["phase"] == "failed" and "BadVersionNumberError" in refused["error"], refused

    def test_a_v3_that_fails_its_health_check_rolls_back_to_v2(self, world, box_a):
        release_image(world["images"]["3"], world["www"] / "repo", world["keys"])
        with box_a.client() as client:
            since = request_update(client, f"{world['url']}/repo", reboot=True)
            wait_update(client, since)
        wait_down(box_a)  # v2 going down for the reboot into v3
        assert box_a.wait_health(version="2", timeout=1800)["status"] == "ok"
        with box_a.client() as client:
            status = update_status(client)
        kernels = {k["version"]: k for k in status["kernels"]}
        assert kernels["3"]["state"] == "bad" and kernels["3"]["tries_left"] == 0, status["kernels"]
        assert kernels["2"]["state"] == "good"
        failures = [a for a in status["attempts"] if a["version"] == "3"]
        assert len(failures) == 3 and all(a["result"] == "failed" for a in failures), status["attempts"]
        assert "paladin.service failed" in failures[-1]["reason"], failures
        with box_a.client() as client:
            assert conversation_intact(client, world["conversation_a"])


def test_power_cuts_in_every_phase_then_the_bundle_installs_v2(power_cuts):
    cuts = power_cuts.result()  # box B, run beside the shared box and box A
    print(f"\npower cuts: {', '.join(cuts)}")
    assert len(cuts) == 4, cuts
