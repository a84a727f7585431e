"""The owner's frame and pages (models, updates, system), in-process over (test) HTTPS: who may load them,
what they show, deleting a model, and GET /system with the journal's recent errors."""

import json
import re
import shutil

import pytest
from starlette.testclient import TestClient

from appliance import command, config, db as database, device, firstboot, owner, tokens
from appliance.web import system, updates
from appliance.web.app import create_app
from appliance.layout import DataDir
from tests.support.wizard import csrf_of

pytestmark = pytest.mark.unit
PASSWORD = "correct horse battery"
PAGES = ("/manage/models", "/manage/updates", "/manage/system", "/access", "/tokens")


def logged_in(client) -> dict:
    """Log the owner in; the headers a page's script sends (its CSRF token)."""
    page = client.post("/login", data={"name": "Ada", "password": PASSWORD, "next": "/manage/models"})
    assert page.url.path == "/manage/models", page.text
    return {"X-CSRF-Token": csrf_of(page)}


@pytest.fixture
def finished_app(two_models, tiny_model):
    """A finished box serving tiny.gguf, whose configuration names other.gguf for restarts; third.gguf is
    neither."""
    shutil.copy(tiny_model, DataDir(two_models).models / "third.gguf")
    cfg = config.parse({"data_dir": str(two_models), "inference": {"threads": 1, "context_tokens": 256,
                                                                   "model": "other.gguf"}})
    firstboot.prepare(cfg)  # the device's keys and certificate, as on a first boot
    db = database.connect(cfg.data.database)
    owner.set_account(db, "Ada", PASSWORD)
    owner.finish(db)
    with TestClient(create_app(cfg, cfg.data.models / "tiny.gguf", prove=False), base_url="https://paladin.local") as client:
        client.cfg, client.token = cfg, tokens.create(db, "script")
        yield client


def test_each_page_renders_in_the_frame_for_the_owner_with_its_place_marked(finished_app):
    logged_in(finished_app)
    for path in PAGES:
        page = finished_app.get(path)
        assert page.status_code == 200 and "<h1>" in page.text, path
        nav = re.search(r"<nav .*?</nav>", page.text, re.S).group(0)
        assert re.findall(r'<a href="([^"]+)" aria-current="page"', nav) == [path]
        assert all(f'href="{p}"' in nav for p in ("/", *PAGES)) and 'action="/logout"' in nav
        assert page.headers["cache-control"] == "no-store"


def test_strangers_go_to_the_login_and_a_token_does_not_open_the_pages(finished_app):
    for path in PAGES:
        assert finished_app.get(path, follow_redirects=False).headers["location"] == f"/login?next={path}"
        refused = finished_app.get(path, headers={"Authorization": f"Bearer {finished_app.token}"}, follow_redirects=False)
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
    assert "<nav" not in finished_app.get("/login").text


def test_the_setup_wizard_has_no_frame_nav(two_models):
    cfg = config.parse({"data_dir": str(two_models)})
    code = firstboot.prepare(cfg).setup_code()
    with TestClient(create_app(cfg, prove=False), base_url="https://paladin.local") as client:
        page = client.post("/setup/code", data={"code": code})
        assert 'name="csrf"' in page.text and "<nav" not in page.text and 'action="/logout"' not in page.text


def test_the_models_page_shows_the_store_the_catalog_and_what_may_be_deleted(finished_app):
    logged_in(finished_app)
    page = finished_app.get("/manage/models").text
    rows = {name: row for name, row in re.findall(r"<tr>\s*<td data-label=\"Model\"><strong>([^<]+)</strong>(.*?)</tr>",
                                                  page, re.S)}
    assert set(rows) >= {"tiny.gguf", "other.gguf", "third.gguf", "smollm2-135m"}
    assert "in use" in rows["tiny.gguf"] and 'class="use"' not in rows["tiny.gguf"]
    assert "served after a restart" in rows["other.gguf"] and "delete" not in rows["other.gguf"]
    assert 'data-model="third.gguf"' in rows["third.gguf"] and "Delete" in rows["third.gguf"]
    assert 'type="module"' in page and "models.js" in page and 'id="upload-file"' in page


def test_a_model_is_deleted_unless_served_or_chosen_and_only_by_its_bare_name(finished_app):
    headers = logged_in(finished_app)
    models = finished_app.cfg.data.models
    served = finished_app.delete("/models/tiny.gguf", headers=headers)
    assert served.status_code == 409 and "serves" in served.json()["error"]["message"]
    chosen = finished_app.delete("/models/other.gguf", headers=headers)
    assert chosen.status_code == 409 and "after a restart" in chosen.json()["error"]["message"]
    for bad in ("sub/third.gguf", "..%2Fthird.gguf", "third.bin", ".third.gguf", "third.gguf%5Cx.gguf"):
        refused = finished_app.delete(f"/models/{bad}", headers=headers)
        assert refused.status_code == 400 and "file name" in refused.json()["error"]["message"], bad
    assert finished_app.delete("/models/missing.gguf", headers=headers).status_code == 404
    assert finished_app.delete("/models/third.gguf").status_code == 403  # a cookie alone: the page's CSRF token is needed
    assert finished_app.delete("/models/third.gguf", headers=headers).json() == {"deleted": "third.gguf"}
    assert not (models / "third.gguf").exists() and (models / "tiny.gguf").exists() and (models / "other.gguf").exists()
    assert finished_app.delete("/models/third.gguf", headers=headers).status_code == 404
    shutil.copy(models / "tiny.gguf", models / "fourth.gguf")
    finished_app.cookies.clear()
    api = {"Authorization": f"Bearer {finished_app.token}"}
    assert finished_app.delete("/models/fourth.gguf", headers=api).status_code == 200
    assert [m["name"] for m in finished_app.get("/models", headers=api).json()["models"]] == ["other.gguf", "tiny.gguf"]


def journal_line(seconds: float, unit: str, message) -> str:
    return json.dumps({"__REALTIME_TIMESTAMP": str(int(seconds * 1e6)), "_SYSTEMD_UNIT": unit, "MESSAGE": message})


def test_system_reports_addresses_disk_memory_the_certificate_and_the_journal(finished_app, monkeypatch):
    asked = []

    def journalctl(argv, **kwargs):
        asked.append((argv, kwargs))
        return "\n".join([journal_line(1700000000, "paladin.service", "x" * 2000),
                          "not json", journal_line(1700000100, "systemd-networkd.service", list(b"bad \xff bytes"))])

    monkeypatch.setattr(command, "run", journalctl)
    api = {"Authorization": f"Bearer {finished_app.token}"}
    state = finished_app.get("/system", headers=api).json()
    assert state["fingerprint"] == device.secrets_of(finished_app.cfg.data_path).fingerprint()
    console = "\n".join(firstboot.lines(finished_app.cfg, device.secrets_of(finished_app.cfg.data_path), []))
    assert f"Certificate SHA-256: {state['fingerprint']}" in console  # what the console shows
    assert isinstance(state["addresses"], list) and not any(a in ("127.0.0.1", "::1") for a in state["addresses"])
    disk = state["disk"]
    assert 0 < disk["free"] <= disk["total"] and disk["models"]["count"] == 3
    assert disk["models"]["bytes"] == sum(p.stat().st_size for p in finished_app.cfg.data.models.glob("*.gguf"))
    assert 0 < state["memory"]["available"] <= state["memory"]["total"] and state["uptime"] > 0
    assert state["model"]["state"] == "ready" and state["model"]["model"] == "tiny"
    argv, kwargs = asked[0]
    assert argv[0] == "journalctl" and "--priority=err" in argv and kwargs["timeout"] <= 10
    newest, oldest = state["journal"]  # newest first; the line that was not JSON is skipped
    assert newest == {"time": 1700000100, "unit": "systemd-networkd.service", "message": "bad \ufffd bytes"}
    assert oldest["unit"] == "paladin.service" and len(oldest["message"]) == system.MESSAGE_CHARS
    logged_in(finished_app)
    page = finished_app.get("/manage/system")
    assert page.status_code == 200 and state["fingerprint"] in page.text and "bad \ufffd bytes" in page.text
    assert finished_app.get("/system", headers=api).status_code == 200
    finished_app.cookies.clear()
    assert finished_app.get("/system").status_code == 401


@pytest.mark.parametrize("failure", ["journalctl is not installed", "journalctl failed (exit 1): No journal files "
                                     "were opened due to insufficient permissions."])
def test_a_journal_that_cannot_be_read_is_said_plainly(finished_app, monkeypatch, failure):
    def journalctl(argv, **kwargs):
        raise command.CommandError(failure)

    monkeypatch.setattr(command, "run", journalctl)
    logged_in(finished_app)
    assert finished_app.get("/system").json()["journal"].startswith(f"The journal could not be read: {failure}")
    page = finished_app.get("/manage/system")
    assert page.status_code == 200 and f"The journal could not be read: {failure}" in page.text


def test_the_updates_page_shows_the_slots_the_settings_and_the_last_outcome(finished_app, monkeypatch):
    snapshot = {"running": "1.2.0", "slots": [
        {"kind": "root", "device": "/dev/vda3", "version": "1.2.0", "booted": True},
        {"kind": "verity", "device": "/dev/vda4", "version": "1.2.0", "booted": False},
        {"kind": "root", "device": "/dev/vda5", "version": "1.1.0", "booted": False}],
        "kernels": [{"version": "1.2.0", "state": "good", "selected": True}],
        "attempts": [{"version": "1.2.0", "result": "good", "reason": "answered", "time": 1700000000}]}
    monkeypatch.setattr(updates.update_status, "snapshot", lambda: dict(snapshot))
    monkeypatch.setattr(updates.update_status, "progress", lambda data_dir: {
        "phase": "failed", "error": "the repository's signature did not verify.", "time": 1700000000})
    headers = logged_in(finished_app)
    page = finished_app.get("/manage/updates").text
    assert 'id="running">1.2.0<' in page and "/dev/vda5" in page and "/dev/vda4" not in page
    assert re.search(r"/dev/vda3</td>.*?running now", page, re.S) and "did not verify" in page
    assert 'data-working="no"' in page and 'id="check" disabled' in page  # no update server yet
    assert finished_app.put("/update/settings", json={"url": "https://updates.example/paladin"}, headers=headers).status_code == 200
    page = finished_app.get("/manage/updates").text
    assert 'value="https://updates.example/paladin"' in page and 'id="check">' in page
    assert "/update/bundle?reboot=true" in page
    assert "cannot take an update" not in page
    snapshot["refusal"] = "this Raspberry Pi 4's bootloader is from 2022-01-01; A/B updates need one from 2022-11-25"
    assert "This box cannot take an update now: this Raspberry Pi 4&#39;s bootloader is from 2022-01-01" in \
        finished_app.get("/manage/updates").text
