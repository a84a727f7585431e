"""A small data partition (a tmpfs of its own): uploads that do not fit are refused with 507 before
or while they are written, nothing half-written stays, and the service goes on answering."""

import asyncio
import os
import subprocess

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from appliance import config, db as database, files, tokens
from appliance.errors import NoSpace
from appliance.web.app import create_app
from appliance.web.http import receive_file
from appliance.layout import DataDir

pytestmark = [pytest.mark.system,
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
        token = tokens.create(database.connect(cfg.data.database), "test")
        with TestClient(create_app(cfg, tiny_model, prove=False), headers={"Authorization": f"Bearer {token}"}) as client:
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
    assert sorted(p.name for p in DataDir(small.data_dir).requests.iterdir()) == []


def test_a_bundle_without_a_length_stops_before_the_reserve(small):
    response = small.put("/update/bundle", content=chunks(64 * 2**20))  # chunked: no Content-Length
    assert response.status_code == 507
    assert sorted(p.name for p in DataDir(small.data_dir).requests.iterdir()) == []
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


def test_a_model_upload_that_cannot_fit_is_refused_before_or_while_it_is_written(small):
    models = DataDir(small.data_dir).models
    announced = small.put("/models/upload?name=big.gguf", content=b"GGUF" + bytes(40 * 2**20))
    assert announced.status_code == 507 and "kept for the database" in announced.json()["error"]["message"]
    unannounced = small.put("/models/upload?name=big.gguf", content=(b"GGUF" + bytes(2**20 - 4) for _ in range(64)))
    assert unannounced.status_code == 507 and "more arrived than announced" in unannounced.json()["error"]["message"]
    assert not any(models.glob("big.gguf*"))
    assert os.statvfs(small.data_dir).f_bavail * os.statvfs(small.data_dir).f_frsize >= files.RESERVE_BYTES
    assert small.get("/health").json()["status"] == "ok"


def test_an_upload_stops_cleanly_when_something_else_fills_the_partition(small):
    """Within its announced length an upload does not check each piece: the disk filling up under it (a
    download at the same time) ends it with 507 and nothing kept, not a server error."""
    dest = DataDir(small.data_dir).models / "big.gguf"
    dest.parent.mkdir(exist_ok=True)
    pieces, filler = [b"GGUF" + bytes(2**20), bytes(2**20)], []

    async def receive():
        if len(pieces) == 1:  # the first piece is written: now something else takes all the room
            filler.append(fill(small.data_dir))
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

    scope = {"type": "http", "method": "PUT", "path": "/models/upload", "query_string": b"",
             "headers": [(b"content-length", str(30 * 2**20).encode())], "state": {"config": config.parse({})}}
    with pytest.raises(NoSpace, match="filled up during the upload"):
        asyncio.run(receive_file(Request(scope, receive), dest, what="a GGUF model", max_bytes=2**30, magic=b"GGUF"))
    assert filler and not any(dest.parent.glob("big.gguf*"))
    filler[0].unlink()
