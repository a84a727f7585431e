"""Shared fixtures: generated and real models, and a real running service."""

from __future__ import annotations

import collections
import shutil
import time
from pathlib import Path

import pytest

from buildhost import tinymodel
from buildhost.wheels import smollm2
from tests.support.images import Builds
from tests.support.served import UNLIMITED, Service
from tests.support.variants import working_variant
from tests.support.vm import GUESTS
from appliance.layout import DataDir

IMAGE_TESTS = Path(__file__).parent / "image"
LAYERS = ("unit", "system", "service", "browser", "emulated", "image")  # pyproject.toml's markers
layer_seconds: collections.Counter = collections.Counter()
SESSION_STARTED = time.monotonic()


def pytest_collection_modifyitems(items):
    """Every test in a layer (`-m` selects by them, so one without would run in none of the loops), and the
    image layer last (a stable sort: its order within is kept): the faster layers answer first, and no VM
    boots while they run."""
    unmarked = [item.nodeid for item in items if not any(item.get_closest_marker(layer) for layer in LAYERS)]
    if unmarked:
        raise pytest.UsageError(f"tests without a layer marker ({', '.join(LAYERS)}): {', '.join(unmarked)}")
    items.sort(key=lambda item: item.path.is_relative_to(IMAGE_TESTS))


def pytest_runtest_logreport(report):
    """Each test's set-up, call and tear-down, added to its layer's time (a shared fixture's set-up counts
    for the first test that needs it)."""
    layer = next((name for name in LAYERS if name in report.keywords), "unmarked")
    layer_seconds[layer] += report.duration


def pytest_terminal_summary(terminalreporter):
    if layer_seconds:
        terminalreporter.write_line("time per layer: " + ", ".join(
            f"{layer} {seconds / 60:.1f} min" for layer, seconds in layer_seconds.items()))
    for vm in GUESTS:  # when each box's qemu ran and what it cost: no guest idles beside a working one
        runs = ", ".join(f"{start - SESSION_STARTED:.0f}-{end - SESSION_STARTED:.0f} s" for start, end, _ in vm.lives)
        terminalreporter.write_line(f"guest {vm.work.name}: qemu ran {runs} since the session began, "
                                    f"{sum(cpu for *_, cpu in vm.lives):.0f} CPU s")


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
    models = DataDir(tmp_path).models
    models.mkdir()
    for model in (tiny_model, other_model):
        shutil.copy(model, models / model.name)
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def image_builds(request, tmp_path_factory, tiny_model) -> Builds | None:
    """When image tests are selected, their images are built from the first test on, beside the faster
    layers (tests/support/images.py); None otherwise."""
    if not any(item.path.is_relative_to(IMAGE_TESTS) for item in request.session.items):
        yield None
        return
    builds = Builds(tmp_path_factory.mktemp("images"), tiny_model)
    yield builds
    builds.close()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    return smollm2()


@pytest.fixture(scope="session")
def quantized_variant(smollm2_model) -> str:
    """inference.cpu_variant that runs a quantized model on this machine ("" almost everywhere)."""
    return working_variant(smollm2_model)


@pytest.fixture(scope="session")
def service(tiny_model, tmp_path_factory):
    # The fuzzing and the queue tests send hundreds of requests and wrong tokens from 127.0.0.1 on purpose.
    running = Service(tiny_model, tmp_path_factory.mktemp("service"), {"WATCHDOG_USEC": "400000"}, UNLIMITED)
    yield running
    running.stop()
