"""The chat page in real headless Chromium against the real service."""

import shutil

import pytest

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")
def test_chat_in_the_browser_streams_and_keeps_the_conversation(service):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(service.url + "/")
        page.fill("#token", service.token)
        page.click("#login button")
        page.fill("#prompt", "Hello from the browser")
        page.click("#send")
        reply = page.locator("#messages li.assistant[data-done=true]")
        expect(reply).to_have_count(1, timeout=60_000)
        assert reply.inner_text().strip()
        page.reload()
        page.locator("#conversations li", has_text="Hello from the browser").click()
        expect(page.locator("#messages li")).to_have_count(2)
        browser.close()
