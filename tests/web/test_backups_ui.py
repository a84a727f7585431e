"""Backups in real headless Chromium against the real service: the recovery kit typed back, Back up now,
the download, the key sealed with a passphrase, and the download restored through the setup wizard of a
second, freshly set-up box (with the key typed, then with the sealed key and its passphrase), which restarts and lets the owner in with the old password to the old conversations.  PALADIN_SCREENSHOTS=DIR keeps
screenshots (docs/screenshots/web-ui)."""

from __future__ import annotations

import re

import pytest

from appliance import device

from tests.backup.conftest import PASSPHRASE, fresh_box, make_box
from tests.support.served import Service
from tests.support.wizard import CHROMIUM, browser_page, log_in, open_restore

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")]


def test_kit_backup_download_and_restore_on_a_second_box(tmp_path, tiny_model, shots):
    from playwright.sync_api import expect

    old = make_box(tmp_path / "old")
    old.data.device.recovery_key.unlink()  # the owner has not set backups up yet
    first = Service(tiny_model, old.data.root)
    try:
        with browser_page() as page:
            log_in(page, first.https_url)
            page.goto(first.https_url + "/manage/backups")
            expect(page.locator("#kit")).to_be_visible()
            shots(page, "9-backups-kit")
            groups = page.locator("#kit-key span").all_inner_texts()
            key = " ".join(groups)
            ask = int(page.locator("#confirm-key").get_attribute("data-group"))
            page.fill("#confirm-key", "WRONG1")
            page.click("#confirm-key-button")
            expect(page.locator("#backups-error")).to_contain_text(f"not group {ask} of the key")
            page.fill("#confirm-key", groups[ask].lower())
            page.click("#confirm-key-button")
            expect(page.locator("#backups-now")).to_be_visible()
            expect(page.locator("#kit")).to_have_count(0)
            page.click("#back-up")
            expect(page.locator("#backup-list tbody tr")).to_have_count(1)
            shots(page, "10-backups")
            with page.expect_download() as download:
                page.click("#backup-list a[download]")
            backup = tmp_path / download.value.suggested_filename
            download.value.save_as(backup)
            page.fill("#passphrase", PASSPHRASE)
            page.fill("#passphrase-again", PASSPHRASE + ".")
            page.click("#seal")
            expect(page.locator("#backups-error")).to_contain_text("The two passphrases differ")
            page.fill("#passphrase-again", PASSPHRASE)
            page.click("#seal")
            with page.expect_download() as download:
                page.click("#sealed-key")
            sealed = tmp_path / download.value.suggested_filename
            download.value.save_as(sealed)
    finally:
        first.stop()
    assert re.fullmatch(r"paladin-kitchen-\d{8}-\d{6}-[A-Z2-7]{4}-[A-Z2-7]{4}\.age", backup.name)
    assert sealed.name == f"recovery-key-{backup.name[-13:-4]}.age"

    new = fresh_box(tmp_path / "new")
    second = Service(tiny_model, new.data.root)
    try:
        with browser_page() as page:
            open_restore(page, second.https_url, device.secrets_of(new.data.root).setup_code(), backup,
                         "\n".join(key.split(" ", 4)))  # pasted over lines, as from paper
            expect(page.locator("#restore-facts")).to_contain_text("2 (2 messages)")
            shots(page, "11-restore")
            page.click("#restore-cancel")  # and again, with the sealed key and its passphrase instead
            expect(page.locator("#restore-preview")).to_be_hidden()
            page.set_input_files("#restore-file", str(backup))
            page.click("#restore-sealed summary")
            page.set_input_files("#restore-sealed-file", str(sealed))
            page.fill("#restore-passphrase", PASSPHRASE[:-1])
            page.click("#restore-upload")
            expect(page.locator("#backups-error")).to_contain_text("that passphrase does not open")
            page.fill("#restore-passphrase", PASSPHRASE)
            page.click("#restore-upload")
            expect(page.locator("#restore-facts")).to_contain_text("Ada")
            page.click("#restore-confirm")
            expect(page).to_have_url(second.https_url + "/login", timeout=90_000)
            log_in(page, second.https_url)
            expect(page.locator("#conversations")).to_contain_text("Recipes")
    finally:
        second.stop()
