"""A backup made by one real service and restored through the setup wizard of another, freshly set up one:
the restore's confirmation restarts `paladin serve` (the same process, as systemd's main PID stays), which puts
it in place before it opens anything; kill -9 before and after the confirmation."""

import contextlib
import re
import ssl
import time
import urllib.parse

import httpx
import pytest

from appliance import device

from tests.support.served import Service
from .conftest import PASSWORD, fresh_box, make_box, rows

pytestmark = pytest.mark.service


def browser(service: Service) -> httpx.Client:
    return httpx.Client(base_url=service.https_url, verify=False, timeout=120, follow_redirects=True)


def csrf(page: httpx.Response) -> dict:
    return {"X-CSRF-Token": re.search(r'name="csrf" content="([^"]+)"', page.text).group(1)}


def certificate(service: Service) -> str:
    return ssl.get_server_certificate(("127.0.0.1", service.https_port))


@pytest.fixture(scope="module")
def backup(tmp_path_factory, tiny_model):
    """A backup made through the real service's API by its owner, with the service's certificate."""
    box = make_box(tmp_path_factory.mktemp("old"))
    service = Service(tiny_model, box.data.root)
    try:
        with browser(service) as owner:
            page = owner.post("/login", data={"name": "Ada", "password": PASSWORD, "next": "/manage/backups"})
            made = owner.post("/backups", headers=csrf(page))
            assert made.status_code == 201, made.text
            name = made.json()["name"]
            content = owner.get(f"/backups/files/{urllib.parse.quote(name)}").content
        return {"box": box, "name": name, "content": content, "certificate": certificate(service),
                "rows": rows(box.data)}
    finally:
        service.stop()


def staged(service: Service, backup: dict) -> httpx.Client:
    """The wizard of a fresh box, past its setup code, with the backup checked and waiting for confirmation."""
    wizard = browser(service)
    code = device.secrets_of(service.data_dir).setup_code()
    wizard.post("/setup/code", data={"code": code})
    wizard.headers.update(csrf(wizard.get("/setup/restore")))
    answer = wizard.put("/backups/restore", content=backup["content"],
                        headers={"X-Recovery-Key": str(backup["box"].key), "X-Backup-Name": backup["name"]})
    assert answer.status_code == 200 and answer.json()["conversations"] == 2, answer.text
    return wizard


def wait_restarted(service: Service, readies: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while service.messages.count("READY=1") <= readies:
        assert service.process.poll() is None, service.output()
        assert time.monotonic() < deadline, service.output()
        time.sleep(0.1)


def test_the_wizard_restores_the_backup_and_the_service_comes_back_as_the_old_box(tmp_path, tiny_model, backup):
    target = fresh_box(tmp_path / "flashed")
    service = Service(tiny_model, target.data.root)
    try:
        pid, readies = service.process.pid, service.messages.count("READY=1")
        with contextlib.closing(staged(service, backup)) as wizard:
            assert wizard.post("/backups/restore/confirm").status_code == 202
        wait_restarted(service, readies)
        assert service.process.pid == pid  # systemd's main process: the same, started again from the top
        assert rows(target.data) == backup["rows"]
        assert certificate(service) == backup["certificate"]
        with browser(service) as owner:
            assert owner.get("/setup", follow_redirects=False).headers["location"] == "/"
            assert owner.post("/login", data={"name": "Ada", "password": PASSWORD}).status_code == 200
            titles = {c["title"] for c in owner.get("/conversations").json()["conversations"]}
            assert titles == {"Recipes", "Garden"}
        old_token = {"Authorization": f"Bearer {backup['box'].token}"}
        assert httpx.get(service.url + "/v1/models", headers=old_token).status_code == 200
    finally:
        service.stop()


@pytest.mark.parametrize("confirmed", [False, True])
def test_kill_9_around_the_confirmation_ends_on_the_old_or_the_whole_new_box(tmp_path, tiny_model, backup, confirmed):
    target = fresh_box(tmp_path / "flashed")
    service = Service(tiny_model, target.data.root)
    old = rows(target.data)  # the token the test harness made, and nothing else
    with contextlib.closing(staged(service, backup)) as wizard:
        if confirmed:
            assert wizard.post("/backups/restore/confirm").status_code == 202
    service.process.kill()  # SIGKILL: before the restart puts anything in place
    service.process.wait()
    service.notify.close()
    again = Service(tiny_model, target.data.root)
    try:
        now = rows(target.data)
        if confirmed:  # the harness's new token went into the old database, which the restore then replaced
            assert now == backup["rows"]
        else:  # the old box, with the harness's second token
            assert now["conversations"] == old["conversations"] == [] and now["owner"] == old["owner"] == []
            assert [t[1] for t in now["api_tokens"]] == ["test", "test"]
        assert httpx.get(again.url + "/health").json()["status"] in ("ok", "no_model")
        assert not target.data.restore.exists()
    finally:
        again.stop()
