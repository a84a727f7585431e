"""A backup restored through the setup wizard of a real, freshly set-up service: the restore's confirmation
restarts `paladin serve` (the same process, as systemd's main PID stays), which puts it in place before it
opens anything; kill -9 right after the confirmation."""

import contextlib
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from appliance import device
from appliance.backup import contents

from tests.support.served import Service, kill_9
from tests.support.wizard import csrf_of
from .conftest import PASSWORD, fresh_box, make_box, rows

pytestmark = pytest.mark.service


def browser(service: Service) -> httpx.Client:
    return httpx.Client(base_url=service.https_url, verify=False, timeout=120, follow_redirects=True)


def csrf(page: httpx.Response) -> dict:
    return {"X-CSRF-Token": csrf_of(page)}


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


def past_the_code(service: Service) -> httpx.Client:
    """The wizard of a fresh box, past its setup code, at its restore step."""
    wizard = browser(service)
    wizard.post("/setup/code", data={"code": device.secrets_of(service.data_dir).setup_code()})
    wizard.headers.update(csrf(wizard.get("/setup/restore")))
    return wizard


def upload(wizard: httpx.Client, backup: dict, content=None) -> httpx.Response:
    return wizard.put("/backups/restore", content=backup["content"] if content is None else content,
                      headers={"X-Recovery-Key": str(backup["box"].key), "X-Backup-Name": backup["name"]})


def staged(service: Service, backup: dict) -> httpx.Client:
    """The wizard of a fresh box, past its setup code, with the backup checked and waiting for confirmation."""
    wizard = past_the_code(service)
    answer = upload(wizard, backup)
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


def test_a_restore_sent_while_another_is_being_checked_is_refused_until_that_one_ends(tmp_path, tiny_model, backup):
    """One backup or restore at a time: while an upload's body is still coming, another is refused (409) with
    what to do, and once the first is checked and staged the next is heard (here: a file that is no backup)."""
    data = fresh_box(tmp_path / "flashed").data
    service = Service(tiny_model, data.root)
    release = threading.Event()

    def slowly():
        yield backup["content"][:4096]
        release.wait(60)
        yield backup["content"][4096:]

    try:
        with contextlib.closing(past_the_code(service)) as first, contextlib.closing(past_the_code(service)) as second, \
                ThreadPoolExecutor(1) as pool:
            checking = pool.submit(upload, first, backup, slowly())
            deadline = time.monotonic() + 60
            while not data.restore_files.is_dir():  # the first has its turn: its staging began
                assert not checking.done() and time.monotonic() < deadline, checking.result().text
                time.sleep(0.05)
            refused = upload(second, backup, b"not a backup")
            assert refused.status_code == 409, refused.text
            assert "a backup or restore is running already; wait for it to end" in refused.text
            release.set()
            assert checking.result().status_code == 200, checking.result().text
            assert "not a PAL-adin backup" in upload(second, backup, b"not a backup").text
    finally:
        release.set()
        service.stop()
