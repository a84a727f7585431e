"""A backup restored through the setup wizard of a real, freshly set-up service: the restore's confirmation
restarts `paladin serve` (the same process, as systemd's main PID stays), which puts it in place before it
opens anything; kill -9 right after the confirmation."""

import contextlib
import re
import ssl
import time

import httpx
import pytest

from appliance import device
from appliance.backup import contents

from tests.support.served import Service, kill_9
from .conftest import PASSWORD, fresh_box, make_box, rows

pytestmark = pytest.mark.service


def browser(service: Service) -> httpx.Client:
    return httpx.Client(base_url=service.https_url, verify=False, timeout=120, follow_redirects=True)


def csrf(page: httpx.Response) -> dict:
    return {"X-CSRF-Token": re.search(r'name="csrf" content="([^"]+)"', page.text).group(1)}


def certificate(service: Service) -> str:
    return ssl.get_server_certificate(("127.0.0.1", service.https_port))


@pytest.fixture(scope="module")
def backup(tmp_path_factory) -> dict:
    """A backup of a box with an owner, conversations and a token (its making through the API is
    tests/web/test_backups.py's), and the certificate that box served."""
    box = make_box(tmp_path_factory.mktemp("old"))
    made = contents.make(box.cfg)
    return {"box": box, "name": made.name, "content": made.path.read_bytes(),
            "certificate": device.secrets_of(box.data.root).tls_certificate.read_text(), "rows": rows(box.data)}


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
        assert certificate(service).strip() == backup["certificate"].strip()
        with browser(service) as owner:
            assert owner.get("/setup", follow_redirects=False).headers["location"] == "/"
            assert owner.post("/login", data={"name": "Ada", "password": PASSWORD}).status_code == 200
            titles = {c["title"] for c in owner.get("/conversations").json()["conversations"]}
            assert titles == {"Recipes", "Garden"}
        old_token = {"Authorization": f"Bearer {backup['box'].token}"}
        assert httpx.get(service.url + "/v1/models", headers=old_token).status_code == 200
    finally:
        service.stop()


def test_kill_9_right_after_the_confirmation_ends_on_the_whole_restored_box(tmp_path, tiny_model, backup):
    """The service dies before its restart put anything in place: the next start does it (a restore never
    confirmed is thrown away at the next start instead: tests/backup/test_backup.py cuts at every step)."""
    target = fresh_box(tmp_path / "flashed")
    service = Service(tiny_model, target.data.root)
    with contextlib.closing(staged(service, backup)) as wizard:
        assert wizard.post("/backups/restore/confirm").status_code == 202
    kill_9(service.process)
    service.notify.close()
    again = Service(tiny_model, target.data.root)
    try:
        # the harness's new token went into the old database, which the restore then replaced
        assert rows(target.data) == backup["rows"]
        assert httpx.get(again.url + "/health").json()["status"] == "ok"
        assert not target.data.restore.exists()
    finally:
        again.stop()
