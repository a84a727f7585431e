"""A person at a browser (headless Chromium, Debian's package, driven by Playwright): through the setup
wizard, into the chat, the tokens page, out and in again.  Used against the local service and against
the booted image."""

from __future__ import annotations

import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium")
PASSWORD = "correct horse battery staple"
WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@contextmanager
def browser_page():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a box under emulation answers in seconds, not milliseconds
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        # The box's certificate is its own: a person accepts it once (after checking its fingerprint).
        context = browser.new_context(ignore_https_errors=True, viewport=WIDTHS["desktop"])
        context.set_default_timeout(60_000)
        try:
            yield context.new_page()
        finally:
            browser.close()


class Shots:
    """Screenshots of each step at desktop and phone widths, into `directory` (None: none)."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        if directory:
            directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, page, name: str) -> None:
        if not self.directory:
            return
        for width, size in WIDTHS.items():
            page.set_viewport_size(size)
            page.screenshot(path=str(self.directory / f"{name}-{width}.png"), full_page=True)
        page.set_viewport_size(WIDTHS["desktop"])

    def phone(self, page, name: str) -> None:
        """The page as it is now, at a phone's width already."""
        if self.directory:
            page.screenshot(path=str(self.directory / f"{name}-phone.png"), full_page=True)


def csrf_of(response) -> str:
    """The CSRF token a page carries (its forms' field, or the meta element its scripts read)."""
    return re.search(r'name="csrf" (?:value|content)="([^"]+)"', response.text).group(1)


def walk(client, code: str, model: str, password: str = PASSWORD, *, until: str = "finish") -> str:
    """The wizard over HTTP as its forms send it (`client` follows redirects): the setup code, then each step
    before `until` (the summary's finish is the caller's); the pages' CSRF token."""
    csrf = csrf_of(client.post("/setup/code", data={"code": code}))
    forms = {"owner": {"name": "Ada", "password": password, "password2": password},
             "device": {"name": "Kitchen box", "timezone": "Europe/Berlin"},
             "model": {"model": model}, "privacy": {"time_sync": "on"}}
    for name, form in forms.items():
        if name == until:
            break
        page = client.post(f"/setup/{name}", data={"csrf": csrf, **form})
        assert page.status_code == 200, page.text
    return csrf


def run_setup(page, base: str, code: str, shots: Shots, *, download: str | None = None) -> float:
    """From the box's address to a finished wizard; the seconds it took.  `download`: a catalog tier to
    download on the model step (with its progress bar) before choosing a model."""
    from playwright.sync_api import expect

    started = time.monotonic()
    page.goto(base + "/")
    expect(page).to_have_url(base + "/setup")
    shots(page, "1-code")
    page.fill("#code", "WRNG-WRNG-WRNG")
    page.click("#code-form button")
    expect(page.locator("#error")).to_contain_text("not the setup code")
    page.fill("#code", code.lower())
    page.click("#code-form button")
    expect(page.locator("#owner-form")).to_be_visible()
    page.reload()  # every step survives a reload
    page.fill("#name", "Ada")
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    shots(page, "2-owner")
    page.click("#owner-form button")
    page.fill("#device-name", "Kitchen box")
    page.select_option("#timezone", "Europe/Berlin")
    shots(page, "3-device")
    page.click("#device-form button")
    expect(page.locator("#model-step")).to_be_visible()
    if download:
        page.click(f"button.download[data-tier='{download}']")
        expect(page.locator(f"#model-form input[value='{download}.gguf']")).to_have_count(1, timeout=120_000)
    shots(page, "4-model")
    page.check("#model-form input[type=radio] >> nth=0")
    page.click("#model-form button")
    shots(page, "5-privacy")
    page.click("#privacy-form button")
    expect(page.locator("#finish-form")).to_be_visible()
    shots(page, "6-summary")
    page.click("#finish-form button")
    expect(page.locator("#composer")).to_be_visible()
    return time.monotonic() - started


def chat(page, text: str, *, whole: bool = True) -> str:
    """Send `text`; the reply once it is complete, or (`whole` False: a slow box) once it streams."""
    from playwright.sync_api import expect

    page.fill("#prompt", text)
    page.click("#send")
    reply = page.locator("#messages li.assistant" + ("[data-done=true]" if whole else ""))
    expect(reply).to_have_count(1, timeout=120_000)
    expect(reply).to_have_text(re.compile(r"\S"), timeout=120_000)
    return reply.inner_text().strip()


def make_token(page, base: str, name: str, shots: Shots) -> str:
    page.goto(base + "/tokens")
    page.fill("#token-name", name)
    page.click("#create-form button")
    token = page.locator("#new-token").inner_text().strip()
    shots(page, "8-tokens")
    return token


def revoke_token(page, name: str) -> None:
    page.click(f"button[aria-label='Revoke {name}']")


def log_out_and_in(page, base: str, shots: Shots) -> None:
    from playwright.sync_api import expect

    page.goto(base + "/tokens")
    page.click("form[action='/logout'] button >> nth=-1")
    expect(page).to_have_url(base + "/login")
    page.fill("#name", "Ada")
    page.fill("#password", PASSWORD + "?")
    page.click("#login-form button")
    expect(page.locator("#error")).to_contain_text("wrong")
    shots(page, "9-login")
    log_in(page, base)


def open_restore(page, base: str, code: str, backup: Path, key: str, *, timeout: float = 60_000) -> None:
    """A fresh box's wizard: the setup code, then "Restore a backup" with the file `backup` and the recovery
    `key` as typed, up to the preview of what the backup holds (Ada's), shown within `timeout` ms."""
    from playwright.sync_api import expect

    page.goto(base + "/setup")
    page.fill("#code", code)
    page.click("#code-form button")
    page.click("#restore-link")
    page.set_input_files("#restore-file", str(backup))
    page.fill("#restore-key", key)
    page.click("#restore-upload")
    expect(page.locator("#restore-facts")).to_contain_text("Ada", timeout=timeout)


def log_in(page, base: str) -> None:
    from playwright.sync_api import expect

    if not page.url.startswith(base + "/login"):
        page.goto(base + "/login")
    page.fill("#name", "Ada")
    page.fill("#password", PASSWORD)
    page.click("#login-form button")
    expect(page.locator("#composer")).to_be_visible()
