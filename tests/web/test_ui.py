"""The owner's web UI in real headless Chromium against the real service: the chat (streaming, stop,
regenerate, rename, delete, the model picker, a chat past the context, hostile model output) and the
models, updates and system pages, at desktop and phone widths.  PALADIN_SCREENSHOTS=DIR keeps
screenshots (docs/screenshots/web-ui)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from appliance import config, conversations, db as database, owner
from buildhost import tinymodel
from hostile import HOSTILE
from served import UNLIMITED, Service
from wizard import CHROMIUM, PASSWORD, WIDTHS, Shots, browser_page, log_in

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")]
PAGES = {"3-models": "/manage/models", "4-updates": "/manage/updates", "5-system": "/manage/system",
         "6-access": "/access", "7-tokens": "/tokens"}
# A reply as a real model writes one (stored, not generated: the generated models write noise).
ANSWER = """Use `sorted()` with a **key**; `str.casefold` ignores case (better than `lower` for non-English names):

```python
names = ["bob", "Alice", "Émile", "dave"]
print(sorted(names, key=str.casefold))
```

| Call | Result |
|---|---|
| `sorted(names)` | `['Alice', 'bob', 'dave', 'Émile']` |
| `sorted(names, key=str.casefold)` | `['Alice', 'bob', 'dave', 'Émile']` |

1. `sorted()` returns a new list;
2. `names.sort(key=str.casefold)` sorts in place.

See [the sorting HOWTO](https://docs.python.org/3/howto/sorting.html)."""


@pytest.fixture(scope="module")
def box(tmp_path_factory, tiny_model):
    """A set-up box serving a slower generated model (a reply of 1000 tokens takes seconds: time to press
    Stop) with a context of 1024 tokens (two replies outgrow it), a tiny one and a hostile one installed."""
    data = tmp_path_factory.mktemp("ui")
    models = data / "models"
    tinymodel.write(models / "medium.gguf", "medium")
    tinymodel.write(models / "hostile.gguf", "small", name="hostile", only=HOSTILE + ("\n\n", " "))
    shutil.copy(tiny_model, models / "tiny.gguf")
    db = database.connect(config.parse({"data_dir": str(data)}).database_path)
    owner.set_account(db, "Ada", PASSWORD)
    owner.finish(db)
    sorting = conversations.create(db, "Sorting names in Python")
    conversations.add_message(db, sorting["id"], "user", "How do I sort a list of names, ignoring case?")
    conversations.add_message(db, sorting["id"], "assistant", ANSWER, finish="stop")
    db.close()
    service = Service(None, data, config=UNLIMITED | {"inference": {
        "model": "medium.gguf", "threads": 1, "context_tokens": 1024, "max_tokens": 1024}})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def page(box):
    with browser_page() as page:
        log_in(page, box.https_url)
        yield page


@pytest.fixture(scope="module")
def shots():
    directory = os.environ.get("PALADIN_SCREENSHOTS")
    return Shots(Path(directory) if directory else None)


def last_reply(page):
    return page.locator("#messages li.assistant").last


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_a_reply_shows_its_markdown(page, box, shots):
    from playwright.sync_api import expect

    page.goto(box.https_url + "/")
    page.locator("#conversations button", has_text="Sorting names in Python").click()
    reply = last_reply(page).locator(".content")
    expect(reply.locator("pre code")).to_contain_text('print(sorted(names, key=str.casefold))')
    expect(reply.locator("table td")).to_have_count(4)
    expect(reply.locator("strong")).to_have_text("key")
    expect(reply.locator("ol li")).to_have_count(2)
    expect(reply.locator("a")).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(page.locator("#messages .regenerate")).to_be_visible()
    shots(page, "1-chat")


def test_a_chat_streams_stops_regenerates_and_outgrows_its_context(page, box, shots):
    from playwright.sync_api import expect

    page.goto(box.https_url + "/")
    page.fill("#prompt", "Tell me about the weather")
    page.press("#prompt", "Shift+Enter")  # a new line, not a send
    page.type("#prompt", "in Berlin")
    assert page.input_value("#prompt") == "Tell me about the weather\nin Berlin"
    page.press("#prompt", "Enter")
    expect(page.locator("#stop")).to_be_visible()
    expect(last_reply(page).locator(".content")).to_have_text(re.compile(r"\S"))
    page.click("#stop")
    expect(last_reply(page)).to_have_attribute("data-done", "true")
    expect(last_reply(page).locator(".note")).to_have_text("You stopped this reply.")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#messages > li.user")).to_have_text("Tell me about the weather\nin Berlin")

    page.click("#messages .regenerate")
    expect(page.locator("#stop")).to_be_visible()
    expect(last_reply(page)).to_have_attribute("data-done", "true", timeout=120_000)
    # 1000 tokens fill the context: the reply is cut by its length, and says so.
    expect(last_reply(page).locator(".note")).to_contain_text("reached its length limit")
    expect(page.locator("#messages > li")).to_have_count(2)

    send(page, "And tomorrow?")
    expect(last_reply(page)).to_have_attribute("data-done", "true", timeout=120_000)
    expect(last_reply(page).locator(".note").first).to_contain_text("The 2 oldest messages no longer fit")
    shots(page, "2-chat-notes")

    page.reload()  # what the box stored: the same conversation, notes and all
    page.locator("#conversations button", has_text="Tell me about the weather").click()
    expect(page.locator("#messages > li")).to_have_count(4)
    expect(last_reply(page).locator(".note").first).to_contain_text("The 2 oldest messages no longer fit")
    expect(page.locator("#messages li.assistant").first.locator(".note")).to_contain_text("length limit")


def test_a_chat_is_renamed_and_deleted(page, box):
    from playwright.sync_api import expect

    page.goto(box.https_url + "/")
    send(page, "A chat to rename")
    expect(last_reply(page)).to_have_attribute("data-done", "true", timeout=120_000)
    page.once("dialog", lambda dialog: dialog.accept("Renamed chat"))
    page.click("#rename")
    expect(page.locator("#title")).to_have_text("Renamed chat")
    expect(page.locator("#conversations button[aria-current]")).to_have_text("Renamed chat")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    expect(page.locator("#title")).to_have_text("New chat")
    expect(page.locator("#conversations button", has_text="Renamed chat")).to_have_count(0)
    page.reload()
    expect(page.locator("#conversations button", has_text="Renamed chat")).to_have_count(0)


def test_hostile_model_output_runs_nothing(page, box):
    """The model picker switches to a model that writes only attack markup; nothing of it executes, as it
    streams or when the stored conversation is shown again."""
    from playwright.sync_api import expect

    page.goto(box.https_url + "/")
    page.select_option("#model-picker", "hostile.gguf")
    expect(page.locator("#model-status")).to_have_text("Now serving hostile.")
    expect(page.locator("#error")).to_be_hidden()
    dialogs = []

    def record(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", record)
    page.evaluate("window.__violations = []; document.addEventListener('securitypolicyviolation', "
                  "(e) => window.__violations.push(e.violatedDirective))")
    send(page, "Show me something")
    expect(last_reply(page)).to_have_attribute("data-done", "true", timeout=120_000)
    raw = box.client().get("/conversations").json()["conversations"][0]
    stored = box.client().get(f"/conversations/{raw['id']}").json()["messages"][-1]["content"]
    assert "<script>" in stored or "javascript:" in stored or "onerror" in stored  # the attack was written
    for shown in ("streamed", "stored"):
        if shown == "stored":
            page.reload()
            page.evaluate("window.__violations = []")
            page.locator("#conversations button", has_text="Show me something").click()
            expect(last_reply(page).locator(".content")).to_have_text(re.compile(r"\S"))
        reply = last_reply(page).locator(".content")
        assert reply.locator("script, img, svg, iframe, form, button, style, [style], div").count() == 0, shown
        assert reply.evaluate("(r) => [...r.querySelectorAll('*')].flatMap((e) => [...e.attributes])"
                              ".filter((a) => a.name.startsWith('on')).length") == 0
        hrefs = reply.locator("a").evaluate_all("(links) => links.map((a) => a.protocol)")
        assert set(hrefs) <= {"http:", "https:", "mailto:"}, hrefs
        assert page.evaluate("window.__violations") == [], shown  # not even an attempt for CSP to block
    page.wait_for_timeout(500)
    assert dialogs == []
    page.remove_listener("dialog", record)
    page.select_option("#model-picker", "medium.gguf")
    expect(page.locator("#model-status")).to_have_text("Now serving medium.")


def test_models_are_imported_chosen_and_deleted_on_their_page(page, box, tiny_model, tmp_path):
    from playwright.sync_api import expect

    page.goto(box.https_url + "/manage/models")
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("not a model")
    page.set_input_files("#upload-file", str(not_a_model))
    page.click("#upload")
    expect(page.locator("#models-error")).to_contain_text("notes.gguf was not imported")
    imported = tmp_path / "imported.gguf"
    shutil.copy(tiny_model, imported)
    page.set_input_files("#upload-file", str(imported))
    page.click("#upload")
    row = page.locator("#installed tr", has_text="imported.gguf")
    expect(row).to_contain_text("installed")
    row.locator("button.use").click()
    expect(row.locator(".badge")).to_have_text("in use")
    expect(row.locator("button.delete")).to_have_count(0)  # not the model being served
    page.locator("#installed tr", has_text="medium.gguf").locator("button.use").click()
    expect(page.locator("#installed tr", has_text="medium.gguf").locator(".badge")).to_have_text("in use")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[aria-label='Delete imported.gguf']")
    expect(page.locator("#installed tr", has_text="imported.gguf")).to_have_count(0)
    assert not (box.data_dir / "models" / "imported.gguf").exists()


def test_update_settings_are_checked_and_saved_on_their_page(page, box):
    from playwright.sync_api import expect

    page.goto(box.https_url + "/manage/updates")
    page.fill("#update-url", "ftp://updates.example")
    page.click("#save-settings")
    expect(page.locator("#updates-error")).to_contain_text("The settings were not saved")
    page.fill("#update-url", "/media/usb/paladin")
    with page.expect_navigation():  # saved, the page shows the box's state again
        page.click("#save-settings")
    expect(page.locator("#update-url")).to_have_value("/media/usb/paladin")
    expect(page.locator("#check")).to_be_enabled()


def test_the_pages_fit_a_phone_and_the_chat_list_opens(page, box, shots):
    from playwright.sync_api import expect

    for name, path in PAGES.items():
        page.goto(box.https_url + path)
        expect(page.locator("h1")).to_be_visible()
        expect(page.locator(f"header nav a[href='{path}']")).to_have_attribute("aria-current", "page")
        shots(page, name)
        page.set_viewport_size(WIDTHS["phone"])
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), f"{path} overflows a phone"
        page.set_viewport_size(WIDTHS["desktop"])
    page.set_viewport_size(WIDTHS["phone"])
    page.goto(box.https_url + "/")
    expect(page.locator("#sidebar")).to_be_hidden()
    page.click("#show-list")
    expect(page.locator("#sidebar")).to_be_visible()
    shots.phone(page, "8-chat-list")
    page.click("#hide-list")
    expect(page.locator("#sidebar")).to_be_hidden()
    page.click("#show-list")
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    page.locator("#conversations button").first.click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#messages > li").first).to_be_visible()
    page.set_viewport_size(WIDTHS["desktop"])


def test_chat_page_weight_and_time_to_interactive(page, box):
    """Recorded in docs/benchmarks.md: bytes over the wire, and when the page's script has run (Send usable).
    The size is held to a budget: no framework creeps in unnoticed."""
    from playwright.sync_api import expect

    # A first visit: nothing from the cache.
    page.context.new_cdp_session(page).send("Network.setCacheDisabled", {"cacheDisabled": True})
    page.goto(box.https_url + "/")
    # expect() polls from here: a polled wait_for_function would eval in the page, which its CSP forbids.
    expect(page.locator("#send")).to_be_enabled()
    timing = page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const resources = performance.getEntriesByType('resource');
        return {bytes: nav.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
                decoded: nav.decodedBodySize + resources.reduce((sum, r) => sum + r.decodedBodySize, 0),
                requests: 1 + resources.length, interactive_ms: Math.round(nav.domContentLoadedEventEnd)};
    }""")
    print(f"\nchat page: {timing}")
    assert 0 < timing["decoded"] < 64 * 1024
