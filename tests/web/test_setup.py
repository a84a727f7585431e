"""The setup wizard, the owner's login and the tokens page, in-process over (test) HTTPS; then the real
service's listeners: TLS with the box's own certificate, the redirect port, the plain API port."""

import re
import ssl
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.testclient import TestClient

from appliance import channel, config, db as database, device, firstboot, owner
from appliance.web.app import create_app
from buildhost.qemu import free_port
from tests.support.served import Service
from tests.support.wizard import csrf_of, walk

PASSWORD = "correct horse battery"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs9Bq0t0z9yJ8y3xYv1n2oE9k4gq5o2q0v9u3c5Wm7a owner@laptop"
ALERT = re.compile(r'role="alert"[^>]*>([^<]*)')


def alert(response) -> str:
    found = ALERT.search(response.text)
    return found.group(1) if found else ""


def step_of(response) -> str:
    return re.search(r'aria-current="step">([^<]*)', response.text).group(1)


@pytest.fixture
def setup_app(two_models):
    cfg = config.parse({"data_dir": str(two_models), "inference": {"threads": 1, "context_tokens": 256},
                        "server": {"setup_attempts": 3}})
    code = firstboot.prepare(cfg).setup_code()
    with TestClient(create_app(cfg, cfg.data.models / "tiny.gguf", prove=False), base_url="https://paladin.local") as client:
        client.cfg, client.code = cfg, code
        yield client


def through_setup(client, *, until: str = "finish") -> str:
    """Walk the wizard as a person would, up to the step `until`; the page's CSRF token."""
    return walk(client, client.code, "tiny.gguf", PASSWORD, until=until)


@pytest.mark.unit
def test_before_setup_every_page_leads_to_the_wizard(setup_app):
    for path in ("/", "/tokens", "/login"):
        assert setup_app.get(path, follow_redirects=False).headers["location"] == "/setup"
    page = setup_app.get("/setup")
    assert step_of(page) == "Setup code" and 'action="/setup/code"' in page.text
    assert setup_app.post("/setup/owner", data={"name": "Eve"}).status_code == 401  # not without the code
    through_setup(setup_app, until="device")  # an account exists, but it counts only once setup is finished
    login = setup_app.post("/login", data={"name": "Ada", "password": PASSWORD}, follow_redirects=False)
    assert login.headers["location"] == "/setup" and "__Host-paladin" not in login.headers.get("set-cookie", "")


@pytest.mark.unit
def test_the_first_page_says_why_the_drives_code_was_not_used(setup_app):
    """An owner without a screen learns it where they look: the reason only, never a code."""
    assert "code-refused" not in setup_app.get("/setup").text
    made = device.secrets_of(setup_app.cfg.data_path)
    made.refused_code_file.write_text(device.weakness("1234 5678"))
    page = setup_app.get("/setup").text
    assert "was not used: it has 8 letters and digits; at least 12 are needed" in page and "1234" not in page


@pytest.mark.unit
def test_wrong_codes_count_down_and_lock_the_wizard_until_the_box_restarts(setup_app):
    said = alert(setup_app.post("/setup/code", data={"code": "AAAA-BBBB-CCCC"}))
    assert "not the setup code" in said and "2 tries left" in said
    setup_app.post("/setup/code", data={"code": "AAAA-BBBB-CCCD"})
    locked = setup_app.post("/setup/code", data={"code": "AAAA-BBBB-CCCE"})
    assert locked.status_code == 423 and "paladin setup reset" in locked.text
    assert setup_app.post("/setup/code", data={"code": setup_app.code}).status_code == 423  # even the right one, now
    fresh = firstboot.prepare(setup_app.cfg)  # what a restart does
    assert fresh.setup_code() != setup_app.code
    assert setup_app.post("/setup/code", data={"code": fresh.setup_code()}, follow_redirects=False).status_code == 303


@pytest.mark.unit
def test_the_code_is_typed_loosely_and_every_step_survives_a_reload(setup_app):
    page = setup_app.post("/setup/code", data={"code": f" {setup_app.code.lower().replace('-', ' ')} "})
    assert step_of(page) == "Your account"
    cookie = setup_app.cookies.get("__Host-paladin")
    assert cookie and re.search(r"Secure; |HttpOnly", str(page.history[0].headers["set-cookie"]))
    csrf = csrf_of(page)
    refused = setup_app.post("/setup/owner", data={"csrf": csrf, "name": "Ada", "password": "short", "password2": "short"})
    assert refused.status_code == 400 and "at least 12 characters" in alert(refused)
    assert "differ" in alert(setup_app.post("/setup/owner", data={"csrf": csrf, "name": "Ada", "password": PASSWORD,
                                                           "password2": PASSWORD + "!"}))
    setup_app.post("/setup/owner", data={"csrf": csrf, "name": "Ada", "password": PASSWORD, "password2": PASSWORD})
    assert step_of(setup_app.get("/setup")) == "This box"  # a reload, or the same session after a reboot
    assert 'value="Ada"' in setup_app.get("/setup?step=owner").text  # back to a step already done
    bad = setup_app.post("/setup/device", data={"csrf": csrf, "name": "Kitchen", "timezone": "Mars/Olympus"})
    assert bad.status_code == 400 and "not a time zone" in alert(bad)
    assert step_of(setup_app.post("/setup/device", data={"csrf": csrf, "name": "Kitchen", "timezone": "UTC"})) == "Model"


@pytest.mark.unit
def test_state_changes_need_the_pages_csrf_token(setup_app):
    csrf = through_setup(setup_app, until="owner")
    form = {"name": "Ada", "password": PASSWORD, "password2": PASSWORD}
    # Non-ASCII tokens too, in the form and in the header (latin-1 on the wire): a 403, not a 500 from
    # comparing str with str.
    for headers, data in (({}, form), ({}, {**form, "csrf": "0" * 64}), ({"X-CSRF-Token": "nope"}, form),
                          ({}, {**form, "csrf": "é" * 64}), ({"X-CSRF-Token": "\xe9t\xe9".encode("latin-1")}, form)):
        refused = setup_app.post("/setup/owner", data=data, headers=headers)
        assert refused.status_code == 403 and "reload it" in refused.json()["error"]["message"]
    assert owner.account(database.connect(setup_app.cfg.data.database)) is None
    assert setup_app.post("/setup/owner", data=form, headers={"X-CSRF-Token": csrf}).status_code == 200


@pytest.mark.unit
def test_a_logged_in_browser_changes_nothing_for_another_site(setup_app):
    """A cross-site post carries the owner's cookie but not the page's CSRF token; even with a token it stole,
    the browser's own word on where the request came from is enough to refuse it."""
    csrf = csrf_of(setup_app.post("/setup/finish", data={"csrf": through_setup(setup_app)}))
    for site in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        refused = setup_app.post("/tokens", data={"csrf": csrf, "name": "stolen"}, headers=site)
        assert refused.status_code == 403 and "another site" in refused.text, site
        plain = setup_app.post("/conversations", content='{"title": "x"}',
                               headers={"X-CSRF-Token": csrf, "Content-Type": "text/plain"})
        assert plain.status_code == 415
    own = {"Sec-Fetch-Site": "same-origin", "Origin": "https://paladin.local"}
    assert setup_app.post("/tokens", data={"csrf": csrf, "name": "mine"}, headers=own).status_code == 201


@pytest.mark.unit
def test_the_model_step_offers_the_store_and_the_catalog_with_a_fit_check(setup_app):
    through_setup(setup_app, until="model")
    page = setup_app.get("/setup")
    assert step_of(page) == "Model" and 'value="tiny.gguf"' in page.text and 'value="other.gguf"' in page.text
    assert "smollm2-135m" in page.text and "GiB</strong> of memory" in page.text
    csrf = csrf_of(page)
    refused = setup_app.post("/setup/model", data={"csrf": csrf, "model": "missing.gguf"})
    assert refused.status_code == 400 and "not installed" in alert(refused)
    assert step_of(setup_app.post("/setup/model", data={"csrf": csrf, "model": "other.gguf"})) == "Privacy"
    assert setup_app.get("/health").json()["model"] == "other"


@pytest.mark.unit
def test_finishing_locks_the_wizard_for_good_and_logs_the_owner_in(setup_app):
    csrf = through_setup(setup_app)
    chat = setup_app.post("/setup/finish", data={"csrf": csrf})
    assert chat.url.path == "/" and "Kitchen box" in chat.text
    saved = config.load(None, {"data_dir": setup_app.cfg.data_dir})
    assert (saved.device.name, saved.device.timezone, saved.device.time_sync, saved.update.automatic,
            saved.inference.model) == ("Kitchen box", "Europe/Berlin", True, False, "tiny.gguf")
    assert device.secrets_of(setup_app.cfg.data_path).setup_code() is None
    assert setup_app.get("/setup", follow_redirects=False).headers["location"] == "/"
    assert setup_app.post("/setup/code", data={"code": setup_app.code}, follow_redirects=False).headers["location"] == "/login"
    assert setup_app.post("/setup/owner", data={"csrf": csrf_of(chat), "name": "Eve", "password": PASSWORD,
                                          "password2": PASSWORD}).status_code == 401


@pytest.mark.unit
def test_the_summary_names_the_owners_model_while_the_governor_has_it_unloaded(setup_app):
    """A first boot's busy CPU makes the governor step the model down: it is unloaded while the next rung
    loads.  The summary drawn then still names the choice and offers Finish (which waits for the swap)."""
    through_setup(setup_app)
    setup_app.portal.call(setup_app.app_state["engine"].swap, None)
    summary = setup_app.get("/setup?step=summary")
    assert "<dt>Model</dt><dd>tiny</dd>" in summary.text and "disabled>Finish" not in summary.text


@pytest.mark.unit
def test_login_logout_and_tokens_made_and_revoked_in_the_browser(setup_app):
    csrf = through_setup(setup_app)
    csrf = csrf_of(setup_app.post("/setup/finish", data={"csrf": csrf}))
    made = setup_app.post("/tokens", data={"csrf": csrf, "name": "Home Assistant"})
    assert made.status_code == 201
    token = re.search(r'id="new-token">([^<]+)', made.text).group(1)
    assert "exists" in alert(setup_app.post("/tokens", data={"csrf": csrf, "name": "Home Assistant"}))
    api = {"Authorization": f"Bearer {token}"}
    assert setup_app.get("/v1/models", headers=api).status_code == 200
    listed = setup_app.get("/tokens").text
    assert "Home Assistant" in listed and token not in listed  # shown once only
    setup_app.post("/tokens/revoke", data={"csrf": csrf, "name": "Home Assistant"})
    assert setup_app.get("/v1/models", headers=api).status_code == 401
    assert setup_app.post("/logout", data={"csrf": csrf}).url.path == "/login"
    assert setup_app.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    wrong = setup_app.post("/login", data={"name": "Ada", "password": PASSWORD + "x"})
    assert wrong.status_code == 401 and "wrong" in alert(wrong)
    elsewhere = setup_app.post("/login", data={"name": "Ada", "password": PASSWORD, "next": "//evil.example/"})
    assert str(elsewhere.url) == "https://paladin.local/"  # never sent to another site


@pytest.mark.unit
def test_the_owner_asks_through_the_page_and_a_token_cannot(setup_app):
    csrf = csrf_of(setup_app.post("/setup/finish", data={"csrf": through_setup(setup_app)}))
    data_dir = setup_app.cfg.data_path
    bad = setup_app.post("/access", data={"csrf": csrf, "lan": "10.0.0.0/8", "ssh": "on", "ssh_key": ""})
    assert bad.status_code == 400 and "public key" in bad.text and not channel.pending(data_dir, "firewall")
    asked = setup_app.post("/access", data={"csrf": csrf, "lan": "192.168.1.0/24\n10.0.0.0/8", "ssh": "on",
                                      "ssh_key": SSH_KEY})
    assert asked.url.path == "/access" and "being applied" in asked.text
    assert channel.take(data_dir, "firewall") == channel.FirewallRequest(
        lan="192.168.1.0/24 10.0.0.0/8", privacy=False, ssh=True, ssh_key=SSH_KEY)
    wrong = setup_app.put("/system/firewall", json={"lan": "10.0.0.1/8"}, headers={"X-CSRF-Token": csrf})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "firewall.lan"
    assert setup_app.put("/system/firewall", json={"privacy": True}, headers={"X-CSRF-Token": csrf}).status_code == 202
    token = re.search(r'id="new-token">([^<]+)', setup_app.post("/tokens", data={"csrf": csrf, "name": "ha"}).text).group(1)
    setup_app.cookies.clear()
    api = {"Authorization": f"Bearer {token}"}
    assert setup_app.put("/system/firewall", json={"ssh": True, "ssh_key": SSH_KEY}, headers=api).status_code in (401, 403)
    assert setup_app.get("/system/firewall", headers=api).status_code in (401, 403)


def finished_owner(data_dir, failures_per_minute: int) -> TestClient:
    """The app of a box whose wizard is finished, with this budget of wrong passwords per client."""
    cfg = config.parse({"data_dir": str(data_dir), "server": {"auth_failures_per_minute": failures_per_minute}})
    db = database.connect(cfg.data.database)
    owner.set_account(db, "Ada", PASSWORD)
    owner.finish(db)
    return TestClient(create_app(cfg, prove=False), base_url="https://paladin.local")


@pytest.mark.unit
def test_wrong_passwords_are_rate_limited_per_client(two_models):
    with finished_owner(two_models, 2) as setup_app:
        statuses = [setup_app.post("/login", data={"name": "Ada", "password": "wrong"}).status_code for _ in range(3)]
        assert statuses == [401, 401, 429]
        assert setup_app.post("/login", data={"name": "Ada", "password": PASSWORD}).status_code == 429


@pytest.mark.unit
def test_wrong_passwords_sent_at_once_are_held_to_the_budget(two_models):
    """Thirty at once (each hash takes a tenth of a second): only the budget's three are checked."""
    with finished_owner(two_models, 3) as setup_app, ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(lambda _: setup_app.post("/login", data={"name": "Ada", "password": "wrong"})
                                 .status_code, range(30)))
    assert sorted(statuses) == [401] * 3 + [429] * 27


@pytest.mark.service
def test_a_code_whose_body_comes_after_the_lock_is_judged_by_the_lock(tiny_model, tmp_path):
    """The right code, sent in a request begun before wrong codes locked the wizard, gets the lock."""
    service = Service(tiny_model, tmp_path, config={"server": {"setup_attempts": 3, "auth_failures_per_minute": 0}})
    try:
        context = ssl.create_default_context(cafile=device.secrets_of(tmp_path).tls_certificate)
        context.check_hostname = False
        body = f"code={device.secrets_of(tmp_path).setup_code()}".encode()
        with socket.create_connection(("127.0.0.1", service.https_port)) as raw, \
                context.wrap_socket(raw, server_hostname="paladin.local") as early:
            early.sendall(b"POST /setup/code HTTP/1.1\r\nHost: paladin.local\r\nConnection: close\r\n"
                          b"Content-Type: application/x-www-form-urlencoded\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.5)  # the request is in: its route waits for the body
            with httpx.Client(verify=context, base_url=service.https_url) as https:
                wrong = [https.post("/setup/code", data={"code": "WRONG-CODE-0000"}).status_code for _ in range(3)]
            early.sendall(body)
            early.settimeout(30)
            answer = b""
            while chunk := early.recv(65536):
                answer += chunk
        assert wrong == [400, 400, 423]
        assert answer.startswith(b"HTTP/1.1 423"), answer[:200]
    finally:
        service.stop()


@pytest.mark.service
def test_the_real_service_speaks_tls_redirects_and_keeps_pages_off_plain_http(tiny_model, tmp_path):
    redirect = free_port()
    service = Service(tiny_model, tmp_path, redirect_port=redirect)
    try:
        made = device.secrets_of(tmp_path)
        context = ssl.create_default_context(cafile=made.tls_certificate)  # trust exactly this box
        context.check_hostname = False  # it is reached as 127.0.0.1 here, named paladin.local in its cert
        with socket.create_connection(("127.0.0.1", service.https_port)) as raw, \
                context.wrap_socket(raw, server_hostname="paladin.local") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with httpx.Client(verify=context) as https:
            assert https.get(service.https_url + "/health").json()["status"] == "ok"
            assert https.get(service.https_url + "/", follow_redirects=False).headers["location"] == "/setup"
        moved = httpx.post(f"http://127.0.0.1:{redirect}/v1/models?x=1", headers={"Host": "paladin.local"})
        assert moved.status_code == 308
        assert moved.headers["location"] == f"https://paladin.local:{service.https_port}/v1/models?x=1"
        hostile = httpx.get(f"http://127.0.0.1:{redirect}/", headers={"Host": "evil.example/x?"})
        assert hostile.headers["location"].startswith("https://paladin.local:")
        plain = httpx.get(service.url + "/setup", headers={"Host": "box.lan"})
        assert plain.status_code == 308 and plain.headers["location"].startswith("https://box.lan:")
        assert service.client().get("/v1/models").status_code == 200  # the API on the plain port stays
        with socket.create_connection(("127.0.0.1", service.https_port)) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the TLS port: hung up on
            raw.settimeout(30)
            try:
                answer = raw.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b""
    finally:
        service.stop()
