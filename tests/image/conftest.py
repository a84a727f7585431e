"""The image tests' builds (tests/support/images.py, started at the session's first test): release keys
made for the run, and each planned image built once for both packages (tests/image/box/: one shared box;
tests/image/updates/: the update boxes)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def release_keys(image_builds) -> Path:
    """Signing keys made for this test run; every image built here trusts their root."""
    return image_builds.keys


@pytest.fixture(scope="session")
def build_image(image_builds):
    """build_image(version): the x86-64 image's build report, once its build (begun in the background) is
    done; v1 is the shared box's and the update boxes' alike."""
    return image_builds.image
