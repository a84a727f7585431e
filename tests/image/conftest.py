"""The image tests' builds: release keys made for the run, and each image built once for both layers
(tests/image/box/: one shared box; tests/image/updates/: the update boxes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildhost import ROOT
from tests.support.vm import build_image as build_one, run_build


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory) -> Path:
    """Signing keys made for this test run; every image built here trusts their root."""
    keys = tmp_path_factory.mktemp("release") / "keys"
    run_build(ROOT / "build.py", "keys", "init", "--keys", keys)
    return keys


@pytest.fixture(scope="session")
def build_image(tmp_path_factory, tiny_model, release_keys):
    """build_image(version, extra_tree=None, compress=False): the x86-64 image, built once per version and
    tree (the shared box's v1 is the update boxes' v1 too)."""
    built: dict = {}

    def build(version: str, extra_tree: Path | None = None, compress: bool = False) -> dict:
        if (version, extra_tree) not in built:
            out = tmp_path_factory.mktemp(f"image-{version}")
            built[version, extra_tree] = build_one(version, out, tiny_model, release_keys, extra_tree=extra_tree,
                                                   compress=compress)
        return built[version, extra_tree]

    return build
