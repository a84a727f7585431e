"""Shared fixtures: generated and real models, release keys, images, and a real running service."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildhost import ROOT, tinymodel
from buildhost.wheels import smollm2
from served import UNLIMITED, Service
from variants import working_variant
from vm import build_image as build_one, run_build

# The image tests' one booted box (image, lan, box, laptop, outsider).
pytest_plugins = ["booted"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tinymodel.write(tmp_path_factory.mktemp("models") / "tiny.gguf", "small")


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> Path:
    """A second generated model under another name, for swaps."""
    return tinymodel.write(tmp_path_factory.mktemp("models") / "other.gguf", "small", name="paladin-other")


@pytest.fixture
def two_models(tmp_path, tiny_model, other_model) -> Path:
    """A data directory whose model store holds tiny.gguf and other.gguf."""
    models = tmp_path / "models"
    models.mkdir()
    for model in (tiny_model, other_model):
        shutil.copy(model, models / model.name)
    return tmp_path


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    return smollm2()


@pytest.fixture(scope="session")
def quantized_variant(smollm2_model) -> str:
    """inference.cpu_variant that runs a quantized model on this machine ("" almost everywhere)."""
    return working_variant(smollm2_model)


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
    # The fuzzing and the queue tests send hundreds of requests and wrong tokens from 127.0.0.1 on purpose.
    running = Service(tiny_model, tmp_path_factory.mktemp("service"), {"WATCHDOG_USEC": "400000"}, UNLIMITED)
    yield running
    running.stop()
