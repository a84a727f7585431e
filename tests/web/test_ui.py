"""The owner's web UI in real headless Chromium against the real service: the chat (streaming, stop,
regenerate, rename, delete, the model picker, a chat past the context, hostile model output) and the
models, updates and system pages, at desktop and phone widths.  PALADIN_SCREENSHOTS=DIR keeps
screenshots (docs/screenshots/web-ui)."""

from __future__ import annotations

import re
import shutil

import pytest

from appliance import config, conversations, db as database, owner
from appliance.layout import DataDir
from buildhost import tinymodel
from tests.support.hostile import HOSTILE
from tests.support.served import UNLIMITED, Service
from tests.support.wizard import CHROMIUM, PASSWORD, WIDTHS, browser_page, log_in

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
def ui_service(tmp_path_factory, tiny_model):
    """A set-up box serving a slower generated model (a reply of 1000 tokens takes seconds: time to press
    Stop) with a context of 1024 tokens (two replies outgrow it), a tiny one and a hostile one installed."""
    data = tmp_path_factory.mktemp("ui")
    models = DataDir(data).models
    tinymodel.write(models / "medium.gguf", "medium")
    tinymodel.write(models / "hostile.gguf", "small", name="hostile", only=HOSTILE + ("\n\n", " "))
    shutil.copy(tiny_model, models / "tiny.gguf")
    db = database.connect(config.parse({"data_dir": str(data)}).data.database)
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
def owner_page(ui_service):
    with browser_page() as owner_page:
        log_in(owner_page, ui_service.https_url)
        yield owner_page


def last_reply(owner_page):
    return owner_page.locator("#messages li.assistant").last


def send(owner_page, text: str) -> None:
    owner_page.fill("#prompt", text)
    owner_page.press("#prompt", "Enter")


def test_a_reply_shows_its_markdown(owner_page, ui_service, shots):
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/")
    owner_page.locator("#conversations button", has_text="Sorting names in Python").click()
    reply = last_reply(owner_page).locator(".content")
    expect(reply.locator("pre code")).to_contain_text('print(sorted(names, key=str.casefold))')
    expect(reply.locator("table td")).to_have_count(4)
    expect(reply.locator("strong")).to_have_text("key")
    expect(reply.locator("ol li")).to_have_count(2)
    expect(reply.locator("a")).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(owner_page.locator("#messages .regenerate")).to_be_visible()
    shots(owner_page, "1-chat")


def test_the_address_names_the_open_conversation_through_reloads_and_back(owner_page, ui_service):
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/")
    owner_page.locator("#conversations button", has_text="Sorting names in Python").click()
    expect(owner_page).to_have_url(re.compile(r"/#[\w-]+$"))
    addressed = owner_page.url
    owner_page.reload()
    expect(owner_page.locator("#title")).to_have_text("Sorting names in Python")
    expect(last_reply(owner_page).locator("pre code")).to_contain_text("sorted(names")
    owner_page.click("#new")
    expect(owner_page).to_have_url(ui_service.https_url + "/")
    expect(owner_page.locator("#messages > li")).to_have_count(0)
    owner_page.go_back()
    expect(owner_page.locator("#title")).to_have_text("Sorting names in Python")
    assert owner_page.url == addressed
    owner_page.goto(ui_service.https_url + "/#no-such-chat")  # deleted since, or mistyped
    expect(owner_page.locator("#error")).to_contain_text("no such conversation")
    expect(owner_page.locator("#title")).to_have_text("New chat")


def test_a_chat_streams_stops_regenerates_and_outgrows_its_context(owner_page, ui_service, shots):
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/")
    owner_page.fill("#prompt", "Tell me about the weather")
    owner_page.press("#prompt", "Shift+Enter")  # a new line, not a send
    owner_page.type("#prompt", "in Berlin")
    assert owner_page.input_value("#prompt") == "Tell me about the weather\nin Berlin"
    owner_page.press("#prompt", "Enter")
    expect(owner_page.locator("#stop")).to_be_visible()
    expect(last_reply(owner_page).locator(".content")).to_have_text(re.compile(r"\S"))
    owner_page.click("#stop")
    expect(last_reply(owner_page)).to_have_attribute("data-done", "true")
    expect(last_reply(owner_page).locator(".note")).to_have_text("You stopped this reply.")
    expect(owner_page.locator("#send")).to_be_visible()
    expect(owner_page.locator("#messages > li.user")).to_have_text("Tell me about the weather\nin Berlin")

    owner_page.click("#messages .regenerate")
    expect(owner_page.locator("#stop")).to_be_visible()
    expect(last_reply(owner_page)).to_have_attribute("data-done", "true", timeout=120_000)
    # 1000 tokens fill the context: the reply is cut by its length, and says so.
    expect(last_reply(owner_page).locator(".note")).to_contain_text("reached its length limit")
    expect(owner_page.locator("#messages > li")).to_have_count(2)

    send(owner_page, "And tomorrow?")
    expect(last_reply(owner_page)).to_have_attribute("data-done", "true", timeout=120_000)
    expect(last_reply(owner_page).locator(".note").first).to_contain_text("The 2 oldest messages no longer fit")
    shots(owner_page, "2-chat-notes")

    owner_page.reload()  # what the box stored: the same conversation, notes and all
    owner_page.locator("#conversations button", has_text="Tell me about the weather").click()
    expect(owner_page.locator("#messages > li")).to_have_count(4)
    expect(last_reply(owner_page).locator(".note").first).to_contain_text("The 2 oldest messages no longer fit")
    expect(owner_page.locator("#messages li.assistant").first.locator(".note")).to_contain_text("length limit")


def test_a_chat_is_renamed_and_deleted(owner_page, ui_service):
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/")
    send(owner_page, "A chat to rename")
    expect(last_reply(owner_page)).to_have_attribute("data-done", "true", timeout=120_000)
    owner_page.once("dialog", lambda dialog: dialog.accept("Renamed chat"))
    owner_page.click("#rename")
    expect(owner_page.locator("#title")).to_have_text("Renamed chat")
    expect(owner_page.locator("#conversations button[aria-current]")).to_have_text("Renamed chat")
    owner_page.once("dialog", lambda dialog: dialog.accept())
    owner_page.click("#delete")
    expect(owner_page.locator("#title")).to_have_text("New chat")
    expect(owner_page.locator("#conversations button", has_text="Renamed chat")).to_have_count(0)
    owner_page.reload()
    expect(owner_page.locator("#conversations button", has_text="Renamed chat")).to_have_count(0)


def test_hostile_model_output_runs_nothing(owner_page, ui_service):
    """The model picker switches to a model that writes only attack markup; nothing of it executes, as it
    streams or when the stored conversation is shown again."""
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/")
    owner_page.select_option("#model-picker", "hostile.gguf")
    expect(owner_page.locator("#model-status")).to_have_text("Now serving hostile.")
    expect(owner_page.locator("#error")).to_be_hidden()
    dialogs = []

    def record(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()
    owner_page.on("dialog", record)
    owner_page.evaluate("window.__violations = []; document.addEventListener('securitypolicyviolation', "
                  "(e) => window.__violations.push(e.violatedDirective))")
    send(owner_page, "Show me something")
    expect(last_reply(owner_page)).to_have_attribute("data-done", "true", timeout=120_000)
    raw = ui_service.client().get("/conversations").json()["conversations"][0]
    stored = ui_service.client().get(f"/conversations/{raw['id']}").json()["messages"][-1]["content"]
    assert "<script>" in stored or "javascript:" in stored or "onerror" in stored  # the attack was written
    for shown in ("streamed", "stored"):
        if shown == "stored":
            owner_page.reload()
            owner_page.evaluate("window.__violations = []")
            owner_page.locator("#conversations button", has_text="Show me something").click()
            expect(last_reply(owner_page).locator(".content")).to_have_text(re.compile(r"\S"))
        reply = last_reply(owner_page).locator(".content")
        assert reply.locator("script, img, svg, iframe, form, button, style, [style], div").count() == 0, shown
        assert reply.evaluate("(r) => [...r.querySelectorAll('*')].flatMap((e) => [...e.attributes])"
                              ".filter((a) => a.name.startsWith('on')).length") == 0
        hrefs = reply.locator("a").evaluate_all("(links) => links.map((a) => a.protocol)")
        assert set(hrefs) <= {"http:", "https:", "mailto:"}, hrefs
        assert owner_page.evaluate("window.__violations") == [], shown  # not even an attempt for CSP to block
    owner_page.wait_for_timeout(500)
    assert dialogs == []
    owner_page.remove_listener("dialog", record)
    owner_page.select_option("#model-picker", "medium.gguf")
    expect(owner_page.locator("#model-status")).to_have_text("Now serving medium.")


def test_models_are_imported_chosen_and_deleted_on_their_page(owner_page, ui_service, tiny_model, tmp_path):
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/manage/models")
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("not a model")
    owner_page.set_input_files("#upload-file", str(not_a_model))
    owner_page.click("#upload")
    expect(owner_page.locator("#models-error")).to_contain_text("notes.gguf was not imported")
    imported = tmp_path / "imported.gguf"
    shutil.copy(tiny_model, imported)
    owner_page.set_input_files("#upload-file", str(imported))
    owner_page.click("#upload")
    row = owner_page.locator("#installed tr", has_text="imported.gguf")
    expect(row).to_contain_text("installed")
    row.locator("button.use").click()
    expect(row.locator(".badge")).to_have_text("in use")
    expect(row.locator("button.delete")).to_have_count(0)  # not the model being served
    owner_page.locator("#installed tr", has_text="medium.gguf").locator("button.use").click()
    expect(owner_page.locator("#installed tr", has_text="medium.gguf").locator(".badge")).to_have_text("in use")
    owner_page.once("dialog", lambda dialog: dialog.accept())
    owner_page.click("button[aria-label='Delete imported.gguf']")
    expect(owner_page.locator("#installed tr", has_text="imported.gguf")).to_have_count(0)
    assert not (DataDir(ui_service.data_dir).models / "imported.gguf").exists()


def test_update_settings_are_checked_and_saved_on_their_page(owner_page, ui_service):
    from playwright.sync_api import expect

    owner_page.goto(ui_service.https_url + "/manage/updates")
    owner_page.fill("#update-url", "ftp://updates.example")
    owner_page.click("#save-settings")
    expect(owner_page.locator("#updates-error")).to_contain_text("The settings were not saved")
    owner_page.fill("#update-url", "/media/usb/paladin")
    with owner_page.expect_navigation():  # saved, the page shows the box's state again
        owner_page.click("#save-settings")
    expect(owner_page.locator("#update-url")).to_have_value("/media/usb/paladin")
    expect(owner_page.locator("#check")).to_be_enabled()


def test_the_pages_fit_a_phone_and_the_chat_list_opens(owner_page, ui_service, shots):
    from playwright.sync_api import expect

    for name, path in PAGES.items():
        owner_page.goto(ui_service.https_url + path)
        expect(owner_page.locator("h1")).to_be_visible()
        expect(owner_page.locator(f"header nav a[href='{path}']")).to_have_attribute("aria-current", "page")
        shots(owner_page, name)
        owner_page.set_viewport_size(WIDTHS["phone"])
        assert owner_page.evaluate("document.documentElement.scrollWidth <= innerWidth"), f"{path} overflows a phone"
        owner_page.set_viewport_size(WIDTHS["desktop"])
    owner_page.set_viewport_size(WIDTHS["phone"])
    owner_page.goto(ui_service.https_url + "/")
    expect(owner_page.locator("#sidebar")).to_be_hidden()
    owner_page.click("#show-list")
    expect(owner_page.locator("#sidebar")).to_be_visible()
    shots.phone(owner_page, "8-chat-list")
    owner_page.click("#hide-list")
    expect(owner_page.locator("#sidebar")).to_be_hidden()
    owner_page.click("#show-list")
    assert owner_page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    owner_page.locator("#conversations button").first.click()
    expect(owner_page.locator("#sidebar")).to_be_hidden()
    expect(owner_page.locator("#messages > li").first).to_be_visible()
    owner_page.set_viewport_size(WIDTHS["desktop"])


def test_chat_page_weight_and_time_to_interactive(owner_page, ui_service):
    """Recorded in docs/benchmarks.md: bytes over the wire, and when the page's script has run (Send usable).
    The size is held to a budget: no framework creeps in unnoticed."""
    from playwright.sync_api import expect

    # A first visit: nothing from the cache.
    owner_page.context.new_cdp_session(owner_page).send("Network.setCacheDisabled", {"cacheDisabled": True})
    owner_page.goto(ui_service.https_url + "/")
    # expect() polls from here: a polled wait_for_function would eval in the page, which its CSP forbids.
    expect(owner_page.locator("#send")).to_be_enabled()
    timing = owner_page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const resources = performance.getEntriesByType('resource');
        return {bytes: nav.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
                decoded: nav.decodedBodySize + resources.reduce((sum, r) => sum + r.decodedBodySize, 0),
                requests: 1 + resources.length, interactive_ms: Math.round(nav.domContentLoadedEventEnd)};
    }""")
    print(f"\nchat page: {timing}")
    assert 0 < timing["decoded"] < 64 * 1024
