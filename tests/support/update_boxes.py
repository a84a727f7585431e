"""The update boxes (tests/image/updates/): what they boot, and box B's run of power cuts, which goes on in
a thread from the image layer's first test on, beside the shared box and then box A.

Box B needs nothing the other boxes change: v1's image (copied to its own disk), v2's bundle (released
as v2 was built, tests/support/images.py) and its own ports.  Its guest works while the others do; none
idles beside it, since it is shut down as soon as its run ends, and its test only waits for the result.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import time
from pathlib import Path

from tests.support.images import Builds
from tests.support.vm import (VM, conversation_intact, cut_first_boot, cut_power, upload_bundle, wait_blessed,
                              wait_update, write_conversation)

SEED = int(os.environ.get("PALADIN_POWERCUT_SEED", time.time()))
# The update boxes boot the very v1 the shared box does; only this credential keeps their governor off
# (its in-image checks are the shared box's).
UNITS = {"paladin-governor.service/off.conf": "[Unit]\nConditionPathExists=/nonexistent\n"}
# Under TCG one vCPU boots a box in twice the time of two, with a third more CPU (docs/benchmarks.md).
CPUS = 2


def update_box(image: dict, work: Path) -> VM:
    """A box booting a copy of `image` (a build report), its governor off."""
    return VM(Path(image["image"]), work, units=UNITS, cpus=CPUS)


class PowerCuts:
    """Box B: v1, then a power cut in each phase of installing v2's bundle (download, write, UKI install,
    first boot); after each, a good version answers and the conversation is there; then v2 is installed
    and blessed.  Started at once in a thread; `result()` is the cuts made, or the failure raised."""

    PHASES = ("download", "write", "uki", "first boot")

    def __init__(self, builds: Builds, work: Path):
        self.builds, self.work, self.vm = builds, work, None
        self.random = random.Random(SEED)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="box-b")
        self._run = self._thread.submit(self._cuts)

    def _cuts(self) -> list[str]:
        self.vm = vm = update_box(self.builds.image("1"), self.work)
        self.builds.image("2")  # released with its bundle
        bundle = self.builds.repository / "bundles/paladin_2_x86-64.bundle"
        cuts = []
        try:
            vm.start()
            vm.wait_health(version="1")
            with vm.client() as client:
                conversation = write_conversation(client)
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
        finally:
            vm.close()

    def result(self) -> list[str]:
        return self._run.result()

    def close(self) -> None:
        """At the session's end: a run still going (the session was interrupted) loses its power now."""
        if self.vm and not self._run.done():
            self.vm.close()
        self._thread.shutdown(wait=True)
