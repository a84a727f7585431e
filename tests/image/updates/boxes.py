"""The update boxes (tests/image/updates/): box A (v1 -> refusals -> box B's backup restored through its
wizard -> v2 online -> a replayed snapshot refused -> v3 rolls back to v2) and box B (v1 set up and backed
up, then a power cut in each phase of installing v2's bundle), each a scenario run step by step in a thread
of its own from the image layer's first test on (tests/image/conftest.py), beside the shared box
(tests/image/box/) and each other.  A test waits for its step and gets its failure; the boxes' guests work
while the others do, and each is shut down after its last step, so none idles.

The two update boxes take the two guest slots (tests/support/vm.py) as the image layer begins, before
the shared box, which waits for box B's to come free: a third guest at once starved the others under
TCG (docs/benchmarks.md), and the short shared box fills the end, beside box A.  The boxes share nothing
they change: each has its own disk and ports; box A's repository is served over HTTP from the host
(10.0.2.2 inside qemu), box B installs v2's bundle, written once when v2 was released.  Box B's backup
goes to box A as a file on this host, made while box A refuses its bad updates (whose checks need no
owner), so that box A seldom waits for it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from appliance import facts
from buildhost import release
from tests.support.fakes import fake_image
from tests.support.images import Builds
from tests.support.booted import confirm_kit, owner_client, set_up
from tests.support.vm import (BOOT_TIMEOUT, VM, card, conversation_intact, cut_first_boot, cut_power, fat_files,
                              partition_digest, request_update, update_status, upload_bundle, wait_blessed, wait_down,
                              wait_update, write_card_code, write_conversation)
from tests.support.wizard import browser_page, log_in, open_restore
from tests.support.vm import release as release_image

SEED = int(os.environ.get("PALADIN_POWERCUT_SEED", time.time()))
# The update boxes boot the very v1 the shared box does; only this credential keeps their governor off
# (its in-image checks are the shared box's).
UNITS = {"paladin-governor.service/off.conf": "[Unit]\nConditionPathExists=/nonexistent\n"}
# Under TCG one vCPU boots a box in twice the time of two, with a third more CPU (docs/benchmarks.md).
CPUS = 2


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@dataclass(frozen=True)
class Made:
    """Box B's backup, downloaded, and what box A needs to restore it and to go on as B's copy."""
    file: Path
    key: str  # the recovery key, as the kit shows it
    token: str  # B's API token, in the backup's database
    conversation: str


class World:
    """The builds, and the directory their repository is in, served over HTTP to the boxes; box B's backup
    once it is made."""

    def __init__(self, builds: Builds, work: Path):
        self.builds, self.work, self.keys = builds, work, builds.keys
        self.backup: concurrent.futures.Future[Made] = concurrent.futures.Future()
        self.www = builds.repository.parent
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(self.www)))
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://10.0.2.2:{self._server.server_address[1]}"

    @functools.cached_property
    def repo(self) -> release.Repository:
        """The repository, once v2 is released into it (box A's alone: box B takes v2's bundle)."""
        self.builds.image("2")
        return release.Repository(self.builds.repository, self.keys)

    def box(self, name: str) -> VM:
        """A box booting a copy of v1, its governor off."""
        return VM(Path(self.builds.image("1")["image"]), self.work / name, units=UNITS, cpus=CPUS)

    def close(self) -> None:
        self._server.shutdown()


class Scenario:
    """Steps on one box, run one after another in a thread begun at once, the first booting it.
    `step(name)` waits for one and returns what it returned or raises what it raised (or the boot's
    failure); a failed step does not stop the next (each is a test of its own, as a class of tests on one
    box would go on); the box is shut down after the last."""

    def __init__(self, name: str, vm: VM, steps: list[tuple[str, Callable]]):
        self.vm = vm
        self._steps = steps
        self._results = {step: concurrent.futures.Future() for step, _ in steps}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for name, step in self._steps:
                try:
                    self._results[name].set_result(step())
                except BaseException as err:  # handed to the step's test, whatever it was
                    self._results[name].set_exception(err)
        finally:
            self.vm.close()

    def boot(self) -> None:
        """v1 up."""
        self.vm.start()
        self.vm.wait_health(version="1")

    def step(self, name: str):
        booted = next(iter(self._results.values()))  # the first step boots the box: without it, nothing ran
        booted.result()
        return self._results[name].result()

    def close(self) -> None:
        """At the session's end: a box still running (the session was interrupted) loses its power now."""
        self.vm.close()
        self._thread.join(60)


class BoxA(Scenario):
    """v1 -> refusals -> box B's backup restored through its wizard -> v2 online -> a replayed snapshot refused
    -> v3 rolls back to v2."""

    def __init__(self, world: World):
        self.world = world
        super().__init__("box-a", world.box("box-a"), [
            ("boot", self.boot), ("refusals", self.refusals), ("restore", self.restore), ("v2", self.online_v2),
            ("replay", self.replay), ("v3", self.v3_rolls_back)])

    def restore(self) -> None:
        """Box B's backup (made while this box refused its bad updates) restored through this box's wizard,
        still at its start, in Chromium: the owner logs in with B's password and finds B's conversation,
        which every later boot must keep; B's API token works here."""
        from playwright.sync_api import expect

        made, vm = self.world.backup.result(timeout=BOOT_TIMEOUT), self.vm
        with browser_page() as page:
            # Under TCG, beside box B's power cuts, the check once took over the page's 60 s (decryption, the
            # database's integrity check, the settings).
            open_restore(page, vm.https_url, vm.setup_code(), made.file, made.key, timeout=600_000)
            page.click("#restore-confirm")
            expect(page).to_have_url(vm.https_url + "/login", timeout=600_000)  # once the service restarted
            log_in(page, vm.https_url)
            expect(page.locator("#conversations")).to_contain_text("before the update")
        vm.carry_token(made.token)
        with vm.client() as client:
            assert conversation_intact(client, made.conversation)
        self.conversation = made.conversation

    def refusals(self) -> None:
        """Each bad source gets a specific error; slot A (root and verity) stays byte-identical."""
        world, vm = self.world, self.vm
        expected = variants(world)
        before = partition_digest(vm.disk, 2), partition_digest(vm.disk, 3)
        errors = {}
        with vm.client() as client:
            for name, message in expected.items():
                since = request_update(client, f"{world.url}/{name}", reboot=False)
                errors[name] = wait_update(client, since)["update"]
            junk = world.work / "junk.bundle"
            junk.write_bytes(os.urandom(100_000))
            since = upload_bundle(client, junk, reboot=False)
            errors["not-a-bundle"] = wait_update(client, since)["update"]
            expected["not-a-bundle"] = "not a PAL-adin update bundle"
            assert update_status(client)["running"] == "1"
        for name, message in expected.items():
            assert errors[name]["phase"] == "failed" and message in errors[name]["error"], (name, errors[name])
        assert (partition_digest(vm.disk, 2), partition_digest(vm.disk, 3)) == before

    def online_v2(self) -> None:
        """The online update to v2 keeps v1 in the other slot."""
        vm = self.vm
        with vm.client() as client:
            since = request_update(client, f"{self.world.url}/repo", reboot=True)
            done = wait_update(client, since)
            assert done["update"]["phase"] in ("installed", "rebooting"), done
        assert vm.wait_health(version="2")["status"] == "ok"
        status = wait_blessed(vm, "2")
        labels = {s["label"]: s for s in status["slots"] if s["kind"] == "root"}
        assert labels["paladin_2"]["booted"] and not labels["paladin_1"]["booted"]
        assert {k["file"] for k in status["kernels"]} == {"paladin_1.efi", "paladin_2.efi"}
        with vm.client() as client:
            assert conversation_intact(client, self.conversation)

    def replay(self) -> None:
        """A new timestamp, but the snapshot it names replaced by the first, validly signed one."""
        world = self.world
        world.repo.publish()  # a snapshot the box has not seen yet, so it must fetch it
        replay = world.www / "replayed"
        shutil.copytree(world.repo.path, replay, copy_function=os.link, ignore=shutil.ignore_patterns("bundles"))
        current = json.loads((replay / "metadata/timestamp.json").read_text())["signed"]["meta"]["snapshot.json"]
        (replay / f"metadata/{current['version']}.snapshot.json").unlink()
        shutil.copy(replay / "metadata/1.snapshot.json", replay / f"metadata/{current['version']}.snapshot.json")
        with self.vm.client() as client:
            since = request_update(client, f"{world.url}/replayed", reboot=False)
            refused = wait_update(client, since)["update"]
        assert refused["phase"] == "failed" and "BadVersionNumberError" in refused["error"], refused

    def v3_rolls_back(self) -> None:
        """A v3 that fails its health check three times is marked bad, and the box is back on v2."""
        world, vm = self.world, self.vm
        release_image(world.builds.image("3"), world.www / "repo", world.keys)
        with vm.client() as client:
            since = request_update(client, f"{world.url}/repo", reboot=True)
            wait_update(client, since)
        wait_down(vm)  # v2 going down for the reboot into v3
        assert vm.wait_health(version="2", timeout=1800)["status"] == "ok"
        with vm.client() as client:
            status = update_status(client)
        kernels = {k["version"]: k for k in status["kernels"]}
        assert kernels["3"]["state"] == "bad" and kernels["3"]["tries_left"] == 0, status["kernels"]
        assert kernels["2"]["state"] == "good"
        failures = [a for a in status["attempts"] if a["version"] == "3"]
        assert len(failures) == 3 and all(a["result"] == "failed" for a in failures), status["attempts"]
        assert "paladin.service failed" in failures[-1]["reason"], failures
        with vm.client() as client:
            assert conversation_intact(client, self.conversation)


class BoxB(Scenario):
    """v1 set up and backed up, then a power cut in each phase of installing v2's bundle that changes the slots or
    the boot entries (write, UKI install, first boot); after each, a good version answers and the conversation is
    there; then v2 is installed and blessed.  Its step "cuts" returns the cuts made.  A cut in the download, which
    writes only the data partition's staging directory, is the power-cut benchmark's (tests/bench/powercut.py):
    here it would cost a boot of the suite's longest path."""

    PHASES = ("write", "uki", "first boot")

    def __init__(self, world: World):
        self.world, self.random = world, random.Random(SEED)
        super().__init__("box-b", world.box("box-b"), [("boot", self.boot), ("cuts", self.cuts)])

    def boot(self) -> None:
        """v1 up with a conversation every later boot must keep, then set up as Ada's (without a screen: with the
        code she wrote on its PALADIN drive after flashing), backups turned on, and a backup of it all made and
        downloaded for box A (World.backup)."""
        vm, backup = self.vm, self.world.backup
        try:
            assert facts.CARD_CODE not in fat_files(card(vm.disk)) and "README.txt" in fat_files(card(vm.disk))
            write_card_code(vm.disk, "\ufeffViolet tractor seven lantern\r\n")  # as Notepad saves it
            super().boot()
            with vm.client() as client:
                self.conversation = write_conversation(client)
            assert vm.setup_code() == "VIOL-ETTR-ACTO-RSEV-ENLA-NTER"  # the console shows hers
            assert facts.CARD_CODE not in fat_files(card(vm.disk))  # taken off the drive
            set_up(vm, code="violet-tractor seven LANTERN")
            owner = owner_client(vm)
            try:
                key = confirm_kit(owner)
                made = owner.post("/backups")
                assert made.status_code == 201, made.text
                file = self.world.work / made.json()["name"]
                file.write_bytes(owner.get(f"/backups/files/{file.name}").raise_for_status().content)
            finally:
                owner.close()
            backup.set_result(Made(file, key, vm.token(), self.conversation))
        except BaseException as err:  # box A waits for it
            backup.set_exception(err)
            raise

    def cuts(self) -> list[str]:
        vm, conversation = self.vm, self.conversation
        self.world.builds.image("2")  # released with its bundle
        bundle = self.world.builds.repository / "bundles/paladin_2_x86-64.bundle"
        cuts = []
        for phase in self.PHASES:
            if phase == "first boot":
                cuts.append(cut_first_boot(vm, bundle, self.random))
            else:
                cuts.append(cut_power(vm, bundle, phase, self.random))
            if phase == "uki":
                continue  # the next boot may be the new version's first: cut_first_boot decides
            vm.start()
            health = vm.wait_health()
            with vm.client() as client:
                assert conversation_intact(client, conversation), cuts
        if health["version"] == "1":  # no cut came late enough for v2: install it from the bundle now
            with vm.client() as client:
                wait_update(client, upload_bundle(client, bundle, reboot=True))
            vm.wait_health(version="2")
        status = wait_blessed(vm, "2")
        assert {s["label"] for s in status["slots"] if s["kind"] == "root"} == {"paladin_1", "paladin_2"}
        with vm.client() as client:
            assert conversation_intact(client, conversation), cuts
        return cuts


def variants(world: World) -> dict[str, str]:
    """Bad repositories, each next to the good one: {directory: the error the box must give}.

    They are derived from the real repository in order, so their metadata versions only grow, as a
    box that sees them one after another requires; the good repository ends up newest.
    """
    www, repo, work = world.www, world.repo, world.work
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
            staged = release.Repository(work / f"fake-repo-{version}-{arch}", world.keys)
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
