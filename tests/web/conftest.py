"""Fixtures of the browser tests here."""

import os
from pathlib import Path

import pytest

from tests.support.wizard import Shots


@pytest.fixture
def shots() -> Shots:
    """Screenshots of the pages, into $PALADIN_SCREENSHOTS when it is set (docs/web-ui.md's come from there)."""
    directory = os.environ.get("PALADIN_SCREENSHOTS")
    return Shots(Path(directory) if directory else None)
