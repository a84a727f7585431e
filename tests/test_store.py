"""Model downloads over real HTTP from a local server: resume, verification, no half files."""

import hashlib
import os
import shutil
import subprocess
import http.server
import threading
import time
from pathlib import Path

import pytest

from appliance import catalog, config, files, store
from appliance.catalog import Catalog
from appliance.store import StoreError
from appliance.layout import DataDir

PAYLOAD = b"GGUF" + bytes(range(256)) * 4096  # ~1 MB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
SIZE = len(PAYLOAD)


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support, and the faults of a home network or a bad server, each for as many
    requests as its list has entries: `cuts` (hang up after N bytes), `stalls` (go quiet for N seconds after
    half the body), `lies` (announce N bytes more than it sends, then hang up), `ignore_range` (send the whole
    file with 200 whatever was asked), `flip` (send a wrong byte at this offset), `fail` (answer this status, once the cuts are done)."""

    cuts: list = []
    stalls: list = []
    lies: list = []
    fail: list = []
    ignore_range = False
    flip: int | None = None
    ranges: list = []

    def do_GET(self):
        kind = type(self)
        if kind.fail and not kind.cuts:
            self.send_error(kind.fail.pop(0))
            return
        start = 0
        if "Range" in self.headers and not kind.ignore_range:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
        kind.ranges.append(start)
        body = bytearray(PAYLOAD[start:])
        if kind.flip is not None and kind.flip >= start:
            body[kind.flip - start] ^= 0xFF
        lie = kind.lies.pop(0) if kind.lies else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) + lie))
        self.end_headers()
        if kind.cuts or lie:
            self.wfile.write(body[:kind.cuts.pop(0)] if kind.cuts else body)
            return
        if kind.stalls:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            time.sleep(kind.stalls.pop(0))
            body = body[len(body) // 2:]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    Handler.ranges, Handler.cuts, Handler.stalls, Handler.lies, Handler.fail = [], [], [], [], []
    Handler.ignore_range, Handler.flip = False, None
    monkeypatch.setattr(store, "RETRY_SECONDS", (0.1,) * store.ATTEMPTS)  # the box waits longer between tries
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.gguf"
    httpd.shutdown()


def fetched(server: str, models: Path, **options) -> Path:
    return store.download(server, DIGEST, SIZE, models, "m.gguf", **options)


@pytest.mark.unit
def test_download_verifies_and_reports_progress(server, tmp_path):
    seen = []
    path = fetched(server, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (SIZE, SIZE) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert not list((tmp_path / ".partial").iterdir())


@pytest.mark.unit
def test_a_dropped_connection_is_made_again_and_resumed_where_it_broke(server, tmp_path):
    Handler.cuts = [300_000, 200_000]
    assert fetched(server, tmp_path).read_bytes() == PAYLOAD
    assert Handler.ranges == [0, 300_000, 500_000]


@pytest.mark.unit
def test_a_stalled_connection_is_given_up_and_resumed(server, tmp_path):
    Handler.stalls = [3]
    assert fetched(server, tmp_path, stall_seconds=0.5).read_bytes() == PAYLOAD
    assert Handler.ranges[0] == 0 and Handler.ranges[1] > 0  # the second request asked for the rest only


@pytest.mark.unit
def test_a_server_that_announces_more_than_it_sends_is_read_to_the_pin(server, tmp_path):
    Handler.cuts, Handler.lies = [400_000], [1000, 1000]
    assert fetched(server, tmp_path).read_bytes() == PAYLOAD
    assert Handler.ranges == [0, 400_000]  # the second answer's extra 1000 bytes are never waited for


@pytest.mark.unit
def test_a_server_that_ignores_the_range_is_read_from_the_start_again(server, tmp_path):
    Handler.cuts, Handler.ignore_range = [300_000], True
    assert fetched(server, tmp_path).read_bytes() == PAYLOAD
    assert Handler.ranges == [0, 0]


@pytest.mark.unit
def test_a_wrong_byte_installs_nothing(server, tmp_path):
    Handler.flip, Handler.cuts = 700_000, [100_000]  # resumed, then one byte wrong far into the file
    with pytest.raises(StoreError, match="SHA-256 mismatch"):
        fetched(server, tmp_path)
    assert not (tmp_path / "m.gguf").exists()
    assert not list((tmp_path / ".partial").iterdir())


@pytest.mark.unit
def test_a_partial_file_left_by_a_reboot_is_resumed(server, tmp_path):
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial/m.gguf.part").write_bytes(PAYLOAD[:123_456])
    assert fetched(server, tmp_path).read_bytes() == PAYLOAD
    assert Handler.ranges == [123_456]


@pytest.mark.unit
def test_a_server_gone_for_good_ends_it_with_what_arrived_kept(server, tmp_path):
    Handler.cuts, Handler.fail = [250_000], [503] * store.ATTEMPTS
    with pytest.raises(StoreError, match=f"failed {store.ATTEMPTS} times in a row at 250000 of {SIZE} bytes"):
        fetched(server, tmp_path)
    assert (tmp_path / ".partial/m.gguf.part").stat().st_size == 250_000 and not (tmp_path / "m.gguf").exists()
    assert fetched(server, tmp_path).read_bytes() == PAYLOAD  # the next try resumes
    assert Handler.ranges == [0, 250_000]


@pytest.mark.unit
def test_a_stopped_download_keeps_what_arrived_to_resume(server, tmp_path):
    Handler.stalls = [30]
    stop = threading.Event()
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done >= SIZE // 2:
            stop.set()

    with pytest.raises(store.Cancelled, match="stopped at"):
        fetched(server, tmp_path, progress=progress, cancelled=stop)
    kept = (tmp_path / ".partial/m.gguf.part").stat().st_size
    assert kept == seen[-1] >= SIZE // 2 and not (tmp_path / "m.gguf").exists()
    Handler.stalls = []
    assert fetched(server, tmp_path).read_bytes() == PAYLOAD
    assert Handler.ranges == [0, kept]


@pytest.mark.unit
def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="download of http://127.0.0.1:9/x failed"):
        store.download("http://127.0.0.1:9/x", DIGEST, SIZE, tmp_path, "m.gguf")


@pytest.mark.unit
def test_import_from_a_local_path(tmp_path, tiny_model):
    path = store.import_file(tiny_model, DataDir(tmp_path).models, Catalog.read())
    assert path.read_bytes() == tiny_model.read_bytes()
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(StoreError, match="not a GGUF model file"):
        store.import_file(not_a_model, DataDir(tmp_path).models, Catalog.read())


@pytest.mark.unit
def test_catalog_pins_every_tier():
    shipped = catalog.of(config.Config())
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
    tier = Catalog.read().tiers[0]
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
            fetched(server, models)
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
def test_a_download_longer_than_its_pin_is_not_read_past_it(tmp_path):
    models = DataDir(tmp_path).models
    models.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={files.RESERVE_BYTES + 8 * 2**20}", "tmpfs", models],
                   check=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unannounced)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StoreError, match="SHA-256 mismatch"):
            fetched(f"http://127.0.0.1:{httpd.server_address[1]}/m.gguf", models)
        assert not any(models.rglob("m.gguf*"))
        assert shutil.disk_usage(models).free > files.RESERVE_BYTES
    finally:
        httpd.shutdown()
        subprocess.run(["umount", "-l", models], check=True)
