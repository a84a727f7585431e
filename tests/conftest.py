"""Shared fixtures: generated and real models, release keys, images, and a real running service."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildhost import ROOT, tinymodel
from buildhost.wheels import smollm2
from served import Service
from vm import build_image as build_one, run_build


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tinymodel.write(tmp_path_factory.mktemp("models") / "tiny.gguf", "small")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    return smollm2()


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory) -> Path:
    """Signing keys made for this test run; every image built here trusts their root."""
    keys = tmp_path_factory.mktemp("release") / "keys"
    run_build(ROOT / "build.py", "keys", "init", "--keys", keys)
    return keys


@pytest.fixture(scope="session")
def build_image(tmp_path_factory, tiny_model, release_keys):
    """build_image(version, extra_tree=None): the x86-64 image, built once per version and tree."""
    built: dict = {}

    def build(version: str, extra_tree: Path | None = None) -> dict:
        if (version, extra_tree) not in built:
            out = tmp_path_factory.mktemp(f"image-{version}")
            built[version, extra_tree] = build_one(version, out, tiny_model, release_keys, extra_tree=extra_tree)
        return built[version, extra_tree]

    return build


@pytest.fixture(scope="session")
def service(tiny_model, tmp_path_factory):
    running = Service(tiny_model, tmp_path_factory.mktemp("service"), {"WATCHDOG_USEC": "400000"})
    yield running
    running.stop()
