"""The image tests' builds (tests/support/images.py, started at the session's first test): release keys
made for the run, and each planned image built once for both packages (tests/image/box/: one shared box;
tests/image/updates/: the update boxes); and box B's power cuts, begun with the image layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.update_boxes import SEED, PowerCuts

UPDATES = Path(__file__).parent / "updates"


@pytest.fixture(scope="session")
def release_keys(image_builds) -> Path:
    """Signing keys made for this test run; every image built here trusts their root."""
    return image_builds.keys


@pytest.fixture(scope="session")
def build_image(image_builds):
    """build_image(version): the x86-64 image's build report, once its build (begun in the background) is
    done; v1 is the shared box's and the update boxes' alike."""
    return image_builds.image


@pytest.fixture(scope="session", autouse=True)
def power_cuts(request, image_builds, tmp_path_factory) -> PowerCuts | None:
    """Box B's run (tests/support/update_boxes.py), begun at the image layer's first test when the update
    tests are selected: its guest works beside the shared box's and box A's, on the cores they leave idle
    while they wait on their own guests; tests/image/updates/ waits for its result.  None otherwise."""
    if not any(item.path.is_relative_to(UPDATES) for item in request.session.items):
        yield None
        return
    print(f"\npower-cut seed {SEED} (PALADIN_POWERCUT_SEED)")
    run = PowerCuts(image_builds, tmp_path_factory.mktemp("box-b"))
    yield run
    run.close()
