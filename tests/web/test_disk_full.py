"""A small data partition (a tmpfs of its own): uploads that do not fit are refused with 507 before
or while they are written, nothing half-written stays, and the service goes on answering."""

import os
import subprocess

import pytest
from starlette.testclient import TestClient

from appliance import config, db as database, files, tokens
from appliance.web.app import create_app

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")]
SIZE = 96 * 2**20


@pytest.fixture
def small(tmp_path, tiny_model):
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", data], check=True)
    try:
        cfg = config.parse({"data_dir": str(data), "server": {"requests_per_second": 0},  # filling takes ~60 requests
                            "inference": {"threads": 1, "context_tokens": 256}})
        token = tokens.create(database.connect(cfg.database_path), "test")
        with TestClient(create_app(cfg, tiny_model), headers={"Authorization": f"Bearer {token}"}) as client:
            client.data_dir = data
            yield client
    finally:
        subprocess.run(["umount", "-l", data], check=True)


def chunks(total: int, size: int = 1 << 20):
    for _ in range(total // size):
        yield b"\0" * size


def test_a_bundle_that_cannot_fit_is_refused_up_front(small):
    response = small.put("/update/bundle", content=b"x" * (20 * 2**20))  # 4 x 20 MiB + the reserve > 96 MiB
    assert response.status_code == 507 and "kept for the database" in response.json()["error"]["message"]
    assert sorted(p.name for p in (small.data_dir / "requests").iterdir()) == []


def test_a_bundle_without_a_length_stops_before_the_reserve(small):
    response = small.put("/update/bundle", content=chunks(64 * 2**20))  # chunked: no Content-Length
    assert response.status_code == 507
    assert sorted(p.name for p in (small.data_dir / "requests").iterdir()) == []
    assert os.statvfs(small.data_dir).f_bavail * os.statvfs(small.data_dir).f_frsize >= files.RESERVE_BYTES - (1 << 20)
    conversation = small.post("/conversations", json={"title": "still writable"})
    assert conversation.status_code == 201
    assert small.get("/health").json()["status"] == "ok"


def fill(directory):
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_partition_refuses_chats_clearly_and_keeps_what_was_saved(small):
    kept = small.post("/conversations", json={"title": "before"}).json()
    filler = fill(small.data_dir)
    refused = small.post("/conversations", json={"title": "x" * 100})
    for n in range(50):  # SQLite may still fit a row or two into free pages of its file
        if refused.status_code != 201:
            break
        refused = small.post("/conversations", json={"title": "x" * 100 + str(n)})
    assert refused.status_code == 507 and "the data partition is full" in refused.json()["error"]["message"]
    assert small.get("/health").json()["status"] == "ok"
    assert small.get(f"/conversations/{kept['id']}").status_code == 200
    filler.unlink()
    assert small.post("/conversations", json={"title": "after"}).status_code == 201
