"""Model downloads over real HTTP from a local server: resume, verification, no half files."""

import hashlib
import os
import shutil
import subprocess
import http.server
import threading
from pathlib import Path

import pytest

from appliance import config, files, store
from appliance.store import StoreError
from appliance.layout import DataDir

PAYLOAD = b"GGUF" + bytes(range(256)) * 4096  # ~1 MB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; `cut_after` drops the connection mid-body once."""

    cut_after: int | None = None
    ranges: list = []

    def do_GET(self):
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
        type(self).ranges.append(start)
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            self.wfile.write(body[: type(self).cut_after])
            type(self).cut_after = None
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.ranges, Handler.cut_after = [], None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.gguf"
    httpd.shutdown()


@pytest.mark.unit
def test_download_verifies_and_reports_progress(server, tmp_path):
    seen = []
    path = store.download(server, DIGEST, tmp_path, "m.gguf", lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not list((tmp_path / ".partial").iterdir())


@pytest.mark.unit
def test_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    Handler.cut_after = 300_000
    with pytest.raises(StoreError, match="ended early at 300000"):
        store.download(server, DIGEST, tmp_path, "m.gguf")
    assert not (tmp_path / "m.gguf").exists()  # nothing half-written where a model is expected
    path = store.download(server, DIGEST, tmp_path, "m.gguf")
    assert path.read_bytes() == PAYLOAD
    assert Handler.ranges == [0, 300_000]


@pytest.mark.unit
def test_wrong_hash_installs_nothing(server, tmp_path):
    with pytest.raises(StoreError, match="SHA-256 mismatch"):
        store.download(server, "0" * 64, tmp_path, "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    assert not list((tmp_path / ".partial").iterdir())


@pytest.mark.unit
def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="download of http://127.0.0.1:9/x failed"):
        store.download("http://127.0.0.1:9/x", DIGEST, tmp_path, "m.gguf")


@pytest.mark.unit
def test_import_from_a_local_path(tmp_path, tiny_model):
    path = store.import_file(tiny_model, DataDir(tmp_path).models, store.Catalog.read())
    assert path.read_bytes() == tiny_model.read_bytes()
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(StoreError, match="not a GGUF model file"):
        store.import_file(not_a_model, DataDir(tmp_path).models, store.Catalog.read())


@pytest.mark.unit
def test_catalog_pins_every_tier():
    shipped = store.catalog(config.Config())
    assert shipped.tiers and all(len(t.sha256) == 64 and t.url.startswith("https://") for t in shipped.tiers)
    assert shipped.tier_of("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m"


@pytest.mark.unit
def test_the_store_lists_its_gguf_files_and_serves_a_choice_by_path_file_name_or_tier(tmp_path):
    cfg = config.parse({"data_dir": str(tmp_path)})
    assert store.installed(cfg.data.models) == {} and store.configured_model(cfg) is None
    models = cfg.data.models
    (models / ".partial").mkdir(parents=True)
    (models / ".partial/c.gguf.part").write_bytes(b"GGUF")
    (models / "b.gguf").write_bytes(b"GGUF1")
    (models / "a.gguf").write_bytes(b"GGUF")
    (models / "notes.txt").write_text("hello")
    (models / ".hidden.gguf").write_bytes(b"GGUF")
    (models / "link.gguf").symlink_to(tmp_path / "elsewhere.gguf")
    assert store.installed(models) == {"a.gguf": 4, "b.gguf": 5}
    assert store.configured_model(cfg) == models / "a.gguf"

    def choosing(model):
        return store.configured_model(config.parse({"data_dir": str(tmp_path), "inference": {"model": model}}))
    assert choosing("b.gguf") == models / "b.gguf"
    assert choosing("/srv/x.gguf") == Path("/srv/x.gguf")
    assert choosing("smollm2-135m") == models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(StoreError, match="neither a path, a .gguf file name nor a catalog tier"):
        choosing("llama3")


@pytest.mark.unit
def test_the_real_smollm2_file_matches_its_catalog_pin(smollm2_model):
    tier = store.Catalog.read().tiers[0]
    assert hashlib.sha256(smollm2_model.read_bytes()).hexdigest() == tier.sha256
    assert smollm2_model.stat().st_size == tier.size


@pytest.mark.system
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_download_that_cannot_fit_writes_nothing(server, tmp_path):
    models = DataDir(tmp_path).models
    models.mkdir()
    # room for the model, but not for the model and the 64 MiB kept for the database
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={files.RESERVE_BYTES}", "tmpfs", models], check=True)
    try:
        with pytest.raises(StoreError, match="not enough space on the data partition"):
            store.download(server, DIGEST, models, "m.gguf")
        assert not (models / "m.gguf").exists() and not any((models / ".partial").iterdir())
    finally:
        subprocess.run(["umount", "-l", models], check=True)


class Unannounced(http.server.BaseHTTPRequestHandler):
    """Sends a body with no Content-Length, 1 MiB at a time, until the client hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(512):
                self.wfile.write(b"G" * 2**20)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.mark.system
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_download_longer_than_announced_stops_before_the_reserve(tmp_path):
    models = DataDir(tmp_path).models
    models.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={files.RESERVE_BYTES + 8 * 2**20}", "tmpfs", models],
                   check=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unannounced)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StoreError, match="more arrived than announced, and the partial file was deleted"):
            store.download(f"http://127.0.0.1:{httpd.server_address[1]}/m.gguf", DIGEST, models, "m.gguf")
        assert not any(models.rglob("m.gguf*"))
        assert shutil.disk_usage(models).free > files.RESERVE_BYTES
    finally:
        httpd.shutdown()
        subprocess.run(["umount", "-l", models], check=True)
