"""The whole first-boot story in real headless Chromium against the real service: the setup wizard (a
wrong code, a reload, a catalog download with its progress bar), a chat, an API token made, used and
revoked, logging out and in.  PALADIN_SCREENSHOTS=DIR keeps each step's screenshots (docs/screenshots)."""

import os
import shutil
from pathlib import Path

import httpx
import pytest

from appliance import device
from appliance.layout import DataDir
from tests.support.catalog import served_catalog
from tests.support.served import Service
from tests.support.wizard import CHROMIUM, Shots, browser_page, chat, log_out_and_in, make_token, revoke_token, run_setup

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")]


@pytest.fixture
def fresh_box(tiny_model, other_model, tmp_path):
    """A box before its setup: the tiny model in its store, and a catalog tier served from 127.0.0.1."""
    data = tmp_path / "data"
    DataDir(data).models.mkdir(parents=True)
    shutil.copy(tiny_model, DataDir(data).models / "tiny.gguf")
    with served_catalog(tmp_path, other_model) as catalog:
        service = Service(None, data, system={"paths": {"catalog": str(catalog)}})
        yield service
        service.stop()


def test_a_new_owner_sets_the_box_up_chats_and_manages_tokens(fresh_box):
    from playwright.sync_api import expect

    shots = Shots(Path(os.environ["PALADIN_SCREENSHOTS"]) if os.environ.get("PALADIN_SCREENSHOTS") else None)
    base = fresh_box.https_url
    code = device.secrets_of(fresh_box.data_dir).setup_code()
    with browser_page() as page:
        seconds = run_setup(page, base, code, shots, download="helper")
        print(f"\nwizard finished {seconds:.1f} s after /health was ready (local service, headless Chromium)")
        assert chat(page, "Hello from the browser")
        shots(page, "7-chat")
        page.reload()
        page.locator("#conversations li", has_text="Hello from the browser").click()
        expect(page.locator("#messages > li")).to_have_count(2)
        token = make_token(page, base, "Home Assistant", shots)
        api = httpx.Client(base_url=fresh_box.url, headers={"Authorization": f"Bearer {token}"})
        assert api.get("/api/tags").status_code == 200
        revoke_token(page, "Home Assistant")
        assert api.get("/api/tags").status_code == 401
        log_out_and_in(page, base, shots)
    assert device.secrets_of(fresh_box.data_dir).setup_code() is None
