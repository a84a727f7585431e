"""The Resources page in real headless Chromium against a real governor and the real service reporting to it:
the state and the ladder, graphs that draw and follow the samples, a step down when the sensors run hot and
back up when they cool, the settings saved and refused, a phone's width, the page's weight, and the page
while the governor does not answer.  PALADIN_SCREENSHOTS=DIR keeps governor-desktop.png and governor-phone.png."""

from __future__ import annotations

import re
import time
import urllib.parse

import pytest
import yaml

from appliance import config, db as database, owner
from appliance.layout import DataDir
from tests.support.governing import COOL, HOT, Governed
from tests.support.wizard import CHROMIUM, PASSWORD, WIDTHS, browser_page, log_in

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./build.py test installs it)")]
PAGE = "/manage/governor"
GRAPHS = ("cpu", "memory", "temperature", "speed", "rung")
# The limits of the box; other programs' CPU is left out (limit 100 %): the tests run beside others on a
# machine of two cores, and only the sensors the test sets should move the model.
SETTINGS = {"cpu_percent": 100}


@pytest.fixture(scope="module")
def governed_box(tmp_path_factory):
    """A set-up box whose ladder is medium (the owner's choice, 2 rungs) over small (2 rungs)."""
    directory = tmp_path_factory.mktemp("governor-ui")
    data = directory / "data"
    data.mkdir()
    db = database.connect(config.parse({"data_dir": str(data)}).data.database)
    owner.set_account(db, "Ada", PASSWORD)
    owner.finish(db)
    db.close()
    governed = Governed(directory, sizes=("small", "medium"), top="medium", governor=SETTINGS)
    governed.wait_for(lambda h: (h.get("governor") or {}).get("connected"), what="the governor connected")
    yield governed
    governed.stop()


@pytest.fixture(scope="module")
def governor_page(governed_box):
    with browser_page() as governor_page:
        governor_page.errors = []
        governor_page.on("pageerror", lambda err: governor_page.errors.append(str(err)))
        log_in(governor_page, governed_box.service.https_url)
        yield governor_page


def state(governed_box) -> dict:
    with governed_box.service.client() as client:
        return client.get("/governor").json()


def poll(check, what: str, timeout: float = 120, governor_page=None):
    """The first true result of `check()`, tried every 0.25 s until `timeout` (waiting in `page`, if given, so
    that its events are delivered meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        governor_page.wait_for_timeout(250) if governor_page else time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


def points(governor_page, selector: str) -> int:
    """How many points the paths under `selector` pass through (each M, L, H or V command)."""
    return governor_page.locator(selector).evaluate_all(
        "(paths) => paths.reduce((n, p) => n + (p.getAttribute('d').match(/[MLHV]/g) || []).length, 0)")


def test_the_page_shows_the_ladder_and_draws_the_graphs(governor_page, governed_box):
    from playwright.sync_api import expect

    history = []

    def record(request) -> None:
        if "/governor/history" in request.url:
            history.append(request.url)
    governor_page.on("request", record)
    poll(lambda: state(governed_box)["index"] == 0, "the owner's model")
    governor_page.goto(governed_box.service.https_url + PAGE)
    expect(governor_page.locator(f"header nav a[href='{PAGE}']")).to_have_attribute("aria-current", "page")
    expect(governor_page.locator("#rung-index")).to_have_text("1 of 4")
    expect(governor_page.locator("#served")).to_contain_text("medium")
    expect(governor_page.locator("#mode")).to_contain_text("On")
    expect(governor_page.locator("#ladder tr")).to_have_count(4)
    expect(governor_page.locator("#ladder tr.current td").first).to_contain_text("1")
    expect(governor_page.locator("#ladder tr[aria-current]")).to_have_count(1)
    expect(governor_page.locator("#warnings")).to_be_hidden()  # the test's sensors all read
    for graph in GRAPHS:
        poll(lambda: points(governor_page, f"#graph-{graph} path.series") >= 4, f"the {graph} graph drew its samples")
    # The three limits are drawn (the one set at 100 % too), each at its place on its scale.
    for graph in ("cpu", "memory", "temperature"):
        expect(governor_page.locator(f"#graph-{graph} line.limit")).to_have_count(1)
    expect(governor_page.locator("#graph-temperature text", has_text="limit 80 °C")).to_have_count(1)
    expect(governor_page.locator("#graph-cpu path.series")).to_have_count(2)  # all programs, and the others
    expect(governor_page.locator("#span")).to_contain_text("samples")
    expect(governor_page.locator("#value-temperature")).to_have_text("now 45 °C")
    # After the whole history, only what is newer than the last sample held.
    poll(lambda: len(history) >= 3, "the page polled the history", governor_page=governor_page)
    since = [float(urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["since"][0]) for url in history]
    assert since[0] == 0 and all(s > 0 for s in since[1:]) and since == sorted(since), since
    governor_page.remove_listener("request", record)
    expect(governor_page.locator("#effective-temperature")).to_have_text("in force: 80 °C")
    expect(governor_page.locator("#effective-cpu_percent")).to_have_text("in force: 100 %")
    # A reply's speed reaches its graph.
    with governed_box.service.client() as client:
        client.post("/v1/completions", json={"model": "paladin", "prompt": "Once", "max_tokens": 32}).raise_for_status()
    expect(governor_page.locator("#value-speed")).to_have_text(re.compile(r"^last reply [\d.]+ tokens/s$"))
    assert governor_page.errors == []


def test_heat_steps_the_model_down_and_cool_brings_it_back_up(governor_page, governed_box, shots):
    from playwright.sync_api import expect

    poll(lambda: state(governed_box)["index"] == 0, "the owner's model, before the heat")
    governor_page.goto(governed_box.service.https_url + PAGE)
    expect(governor_page.locator("#rung-index")).to_have_text("1 of 4")
    governed_box.sensors.set(HOT)
    expect(governor_page.locator("#graph-rung .marker.down", has_text="temperature").first).to_be_attached(timeout=120_000)
    expect(governor_page.locator("#rung-index")).not_to_have_text("1 of 4", timeout=120_000)
    expect(governor_page.locator("#ladder tr.current td").first).not_to_have_text(re.compile(r"^1\b"))
    # Every graph marks the decision; its tooltip and the table give the reason.
    for graph in GRAPHS:
        expect(governor_page.locator(f"#graph-{graph} .marker.down").first).to_be_attached()
    down = governor_page.locator("#decision-rows tr.down", has_text="temperature").first
    expect(down).to_contain_text("Stepped down")
    expect(down).to_contain_text("temperature")
    expect(down.locator("td").first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$"))
    expect(governor_page.locator("#value-temperature")).to_have_text("now 90 °C")
    assert "V" in governor_page.locator("#graph-rung path.series").get_attribute("d")  # a step line, stepped

    governed_box.sensors.set(COOL)
    expect(governor_page.locator("#graph-rung .marker.up").first).to_be_attached(timeout=120_000)
    up = governor_page.locator("#decision-rows tr.up").first
    expect(up).to_contain_text("Stepped up")
    expect(up).to_contain_text("every limit safe")
    # Back at the owner's model in the end, and the page says so.
    expect(governor_page.locator("#rung-index")).to_have_text("1 of 4", timeout=120_000)
    expect(governor_page.locator("#served")).to_contain_text("medium, 2 threads", timeout=120_000)
    shots(governor_page, "governor")
    assert governor_page.errors == []


def test_the_pages_fit_a_phone_and_weigh_little(governor_page, governed_box):
    governor_page.set_viewport_size(WIDTHS["phone"])
    try:
        governor_page.goto(governed_box.service.https_url + PAGE)
        poll(lambda: points(governor_page, "#graph-cpu path.series") >= 4, "the graphs drew on a phone")
        assert governor_page.evaluate("document.documentElement.scrollWidth <= innerWidth"), "the page overflows a phone"
        width = governor_page.locator("#graph-cpu").evaluate("(svg) => svg.getBoundingClientRect().width")
        assert 200 < width <= WIDTHS["phone"]["width"]
        assert governor_page.locator("#graph-cpu").get_attribute("viewBox") == f"0 0 {round(width)} 120"
    finally:
        governor_page.set_viewport_size(WIDTHS["desktop"])
    # A first visit: the page itself (HTML, style, scripts), without the data its script asks for.
    cdp = governor_page.context.new_cdp_session(governor_page)
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    governor_page.goto(governed_box.service.https_url + PAGE)
    poll(lambda: points(governor_page, "#graph-cpu path.series") >= 4, "the graphs drew")
    weight = governor_page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const own = performance.getEntriesByType('resource').filter((r) => r.initiatorType !== 'fetch');
        return {decoded: nav.decodedBodySize + own.reduce((sum, r) => sum + r.decodedBodySize, 0),
                requests: 1 + own.length};
    }""")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": False})
    print(f"\nresources page: {weight}")
    assert 0 < weight["decoded"] < 64 * 1024
    assert governor_page.errors == []


def test_settings_are_saved_and_a_bad_value_changes_nothing(governor_page, governed_box):
    from playwright.sync_api import expect

    governor_page.goto(governed_box.service.https_url + PAGE)
    expect(governor_page.locator("#g-pin option[value='small']")).to_have_count(1)
    governor_page.select_option("#g-pin", "small")
    governor_page.click("#save-settings")
    expect(governor_page.locator("#settings-status")).to_contain_text("Saved")
    pinned = poll(lambda: (s := state(governed_box))["pinned"] and s["rung"]["model"] == "small" and s,
                  "the governor serving the pinned model")
    assert pinned["ladder"][0]["model"] == "small"
    expect(governor_page.locator("#mode")).to_contain_text("pinned")
    expect(governor_page.locator("#served")).to_contain_text("small", timeout=120_000)

    saved = DataDir(governed_box.service.data_dir).owner_config.read_text()
    governor_page.fill("#g-temperature", "500")
    governor_page.click("#save-settings")
    expect(governor_page.locator("#governor-error")).to_contain_text("The settings were not saved")
    expect(governor_page.locator("#governor-error")).to_contain_text("temperature")
    assert DataDir(governed_box.service.data_dir).owner_config.read_text() == saved
    assert state(governed_box)["limits"]["temperature"] == 80 and state(governed_box)["pinned"]

    governor_page.fill("#g-temperature", "0")
    governor_page.select_option("#g-pin", "")
    governor_page.click("#save-settings")
    expect(governor_page.locator("#governor-error")).to_be_hidden()
    expect(governor_page.locator("#settings-status")).to_contain_text("Saved")
    poll(lambda: not (s := state(governed_box))["pinned"] and s["rung"]["model"] == "medium", "the pin lifted")
    governor = yaml.safe_load(DataDir(governed_box.service.data_dir).owner_config.read_text())["governor"]
    assert governor["pin"] == "" and governor["temperature"] == 0
    expect(governor_page.locator("#mode")).to_contain_text("On")
    assert governor_page.errors == []


def test_without_the_governor_the_page_says_why_and_draws_nothing(governor_page, governed_box):
    from playwright.sync_api import expect

    governor_page.goto(governed_box.service.https_url + PAGE)
    expect(governor_page.locator("#graph-cpu path.series")).to_have_count(2)
    governed_box.governor.stop()
    # The open page notices, and keeps what it drew.
    expect(governor_page.locator("#lost")).to_contain_text("stopped answering", timeout=60_000)
    poll(lambda: not state(governed_box)["connected"], "the service noticed the governor is gone")
    governor_page.reload()
    expect(governor_page.locator("#offline")).to_be_visible()
    expect(governor_page.locator("#problem")).to_have_text(re.compile(r"\S"))
    expect(governor_page.locator("svg")).to_have_count(0)
    expect(governor_page.locator("#settings-form")).to_be_visible()  # the settings are the box's, not the governor's
    governor_page.set_viewport_size(WIDTHS["phone"])
    assert governor_page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    governor_page.set_viewport_size(WIDTHS["desktop"])
    for _ in range(2):  # polls against a governor that is not there
        with governor_page.expect_response(lambda r: r.url.endswith("/governor")):
            pass
    assert governor_page.errors == []
