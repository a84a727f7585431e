"""The image tests' builds (tests/support/images.py, started at the session's first test): release keys
made for the run, and each planned image built once for both packages (tests/image/box/: one shared box;
tests/image/updates/: the update boxes, whose scenarios begin with the image layer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.image.updates.boxes import SEED, BoxA, BoxB, Scenario, World

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
def update_boxes(request, image_builds, tmp_path_factory) -> dict[str, Scenario] | None:
    """Box A's and box B's scenarios (tests/image/updates/boxes.py), begun at the image layer's first test
    when the update tests are selected: their guests work beside the shared box's, on the cores a single
    guest leaves idle while it waits; the tests of tests/image/updates/ wait for their steps.  None
    otherwise."""
    if not any(item.path.is_relative_to(UPDATES) for item in request.session.items):
        yield None
        return
    print(f"\npower-cut seed {SEED} (PALADIN_POWERCUT_SEED)")
    world = World(image_builds, tmp_path_factory.mktemp("updates"))
    boxes = {"b": BoxB(world), "a": BoxA(world)}
    yield boxes
    for box in boxes.values():
        box.close()
    world.close()
