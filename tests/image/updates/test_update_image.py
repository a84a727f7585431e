"""Signed A/B updates on a booted box (qemu, TCG): online and bundle installs, refusals, automatic
rollback of a version that fails its boot assessment, and power cuts in every phase; and a backup of one
box restored through the setup wizard of another, freshly flashed, in a browser.

Three images are built (v1; v2; v3 whose assistant cannot start) and released with `build.py release`
to a repository served over HTTP from the host (10.0.2.2 inside qemu).  Box B is set up and backed up,
then takes v2 from the bundle while its power is cut during the write, the UKI install and the first boot
(and in the download too in `./build.py bench powercut`).  Box A goes v1 -> refusals -> B's backup restored in Chromium through its wizard, not
yet begun (so that it carries B's owner, conversation and API token from then on) -> v2 (online) -> v3 ->
back to v2 by itself.  Boots are few and shared.

The two boxes run at once, beside the shared box, each in a thread of its own from the image layer's
first test on (tests/image/updates/boxes.py, which holds the steps and their checks); each test here
waits for its step.  Only v3 and the update boxes carry test-only settings, none of them in the shipped
image: v3's assistant is not restarted (its extra tree), and the governor does not start in the update
boxes (a credential drop-in), whose in-image checks are the shared box's (tests/image/box/).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.image


class TestBoxA:
    """v1 -> refusals -> box B's backup restored through its wizard -> v2 online -> a replayed snapshot refused
    -> v3 rolls back to v2."""

    def test_refusals_leave_the_running_slot_untouched(self, update_boxes):
        update_boxes["a"].step("refusals")

    def test_box_b_s_backup_restores_through_the_wizard_of_this_fresh_box_in_a_browser(self, update_boxes):
        update_boxes["a"].step("restore")

    def test_online_update_to_v2_keeps_v1_in_the_other_slot(self, update_boxes):
        update_boxes["a"].step("v2")

    def test_a_replayed_old_snapshot_is_refused(self, update_boxes):
        update_boxes["a"].step("replay")

    def test_a_v3_that_fails_its_health_check_rolls_back_to_v2(self, update_boxes):
        update_boxes["a"].step("v3")


def test_power_cuts_in_every_phase_then_the_bundle_installs_v2(update_boxes):
    cuts = update_boxes["b"].step("cuts")
    print(f"\npower cuts: {', '.join(cuts)}")
    assert len(cuts) == 3, cuts
