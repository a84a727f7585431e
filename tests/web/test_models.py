"""The owner's models: choices, uploads and refusals in-process against real llama.cpp; then the real
service across swaps and a restart, and with a catalog of tiers served from 127.0.0.1 (downloads, their
progress and failures, uploads past the body limit, pins, a stalled upload)."""

import fcntl
import hashlib
import http.client
import http.server
import json
import queue
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from starlette.testclient import TestClient

from appliance import config, db as database, files, speed, store, tokens
from appliance.catalog import HEADROOM, Catalog
from appliance.inference import llama
from appliance.web import models
from appliance.web.app import create_app
from appliance.layout import DataDir
from tests.support.catalog import tier_entry
from tests.support.fakes import malformed_model
from tests.support.served import UNLIMITED, Service

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def owner(two_models):
    cfg = config.parse({"data_dir": str(two_models), "inference": {"threads": 1, "context_tokens": 256}})
    token = tokens.create(database.connect(cfg.data.database), "test")
    with TestClient(create_app(cfg, cfg.data.models / "tiny.gguf", prove=False), headers={"Authorization": f"Bearer {token}"}) as c:
        c.config = cfg
        yield c


def saved(cfg: config.Config) -> str:
    return config.load(None, {"data_dir": cfg.data_dir}).inference.model


@pytest.mark.unit
def test_the_store_is_listed_with_the_served_model(owner):
    listed = owner.get("/models").json()["models"]
    assert [(m["name"], m["id"], m["tier"], m["licence"], m["ram"], m["served"]) for m in listed] == [
        ("other.gguf", "other", None, None, None, False), ("tiny.gguf", "tiny", None, None, None, True)]
    assert listed[1]["size"] == (owner.config.data.models / "tiny.gguf").stat().st_size


@pytest.mark.unit
def test_a_choice_is_served_then_saved(owner):
    chosen = owner.put("/models/default", json={"model": "other.gguf"})
    assert chosen.status_code == 200 and chosen.json() == {"model": "other", "choice": "other.gguf"}
    assert [m["id"] for m in owner.get("/v1/models").json()["data"]] == ["other", "paladin"]
    assert [m["served"] for m in owner.get("/models").json()["models"]] == [True, False]
    assert saved(owner.config) == "other.gguf"
    assert store.configured_model(config.load(None, {"data_dir": owner.config.data_dir})).name == "other.gguf"


@pytest.mark.unit
@pytest.mark.parametrize("name, status, says", [
    ("../tiny.gguf", 400, "without directories"), ("models/tiny.gguf", 400, "without directories"),
    ("tiny", 400, "a catalog tier or the file name"), (".hidden.gguf", 400, "a catalog tier"),
    ("x" * 300 + ".gguf", 400, "at most 255 bytes"), (42, 400, "'model' must be a string"),
    ("missing.gguf", 404, "is not installed on this box"), ("smollm2-135m", 404, "paladin model download")])
def test_a_bad_choice_is_refused_and_nothing_changes(owner, name, status, says):
    refused = owner.put("/models/default", json={"model": name})
    assert refused.status_code == status and says in refused.json()["error"]["message"]
    assert refused.json()["error"]["param"] == "model"
    assert owner.get("/health").json()["model"] == "tiny" and saved(owner.config) == ""


@pytest.mark.unit
def test_a_model_that_does_not_load_is_refused_and_the_old_one_serves_on(owner):
    (owner.config.data.models / "broken.gguf").write_bytes(b"GGUF" + bytes(100))
    refused = owner.put("/models/default", json={"model": "broken.gguf"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "model_unusable"
    assert "the box still serves 'tiny'" in refused.json()["error"]["message"]
    assert owner.get("/health").json()["model"] == "tiny" and saved(owner.config) == ""


def drained(answers: queue.Queue) -> list:
    taken = []
    while not answers.empty():
        taken.append(answers.get())
    return taken


@pytest.mark.service
def test_the_alias_is_served_across_swaps_and_the_choice_after_a_restart(two_models):
    running = Service(None, two_models, config=UNLIMITED | {"inference": {"model": "tiny.gguf"}})
    asks = {"/v1/chat/completions": {"max_tokens": 4}, "/api/chat": {"stream": False, "options": {"num_predict": 4}}}
    answers, stop, after_swaps = {path: queue.Queue() for path in asks}, threading.Event(), {}

    def ask(path: str) -> None:  # a client naming the alias, one request after the other, all the while
        with running.client() as c:
            while not stop.is_set():
                response = c.post(path, json={"model": "paladin", "messages": HI} | asks[path])
                answers[path].put((response.status_code, response.json().get("model")))

    askers = [threading.Thread(target=ask, args=(path,)) for path in asks]
    for asker in askers:
        asker.start()
    try:
        seen = {path: [answers[path].get(timeout=60)] for path in asks}  # answered before the first swap
        with running.client() as c:
            for name in ("other.gguf", "tiny.gguf", "other.gguf"):
                chosen = c.put("/models/default", json={"model": name})
                assert chosen.status_code == 200 and chosen.json()["model"] == name.removesuffix(".gguf")
        for path in asks:  # all answered so far, then two more: the second was asked after the last swap
            seen[path] += drained(answers[path])
            after_swaps[path] = len(seen[path]) + 1
            seen[path] += [answers[path].get(timeout=60), answers[path].get(timeout=60)]
    finally:
        stop.set()
        for asker in askers:
            asker.join(60)
        exit_code = running.stop()
    for path in asks:
        seen[path] += drained(answers[path])
    assert {status for path in asks for status, _ in seen[path]} == {200}
    openai = [model for _, model in seen["/v1/chat/completions"]]
    assert openai[0] == "tiny" and set(openai[after_swaps["/v1/chat/completions"]:]) == {"other"}
    assert exit_code == 0
    restarted = Service(None, two_models)
    try:
        with restarted.client() as c:
            assert c.get("/health").json()["model"] == "other"
            reply = c.post("/v1/chat/completions", json={"model": "paladin", "messages": HI, "max_tokens": 2})
            assert reply.status_code == 200 and reply.json()["model"] == "other"
    finally:
        restarted.stop()


@pytest.mark.unit
def test_no_download_has_run_and_an_unknown_tier_is_refused_naming_the_tiers(owner):
    assert owner.get("/models/download").json() == {"state": "idle", "tier": None, "done": 0, "total": 0,
                                                    "error": None, "speed": 0, "seconds_left": None}
    assert owner.delete("/models/download").status_code == 409
    refused = owner.post("/models/download", json={"tier": "llama3"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert all(tier.name in refused.json()["error"]["message"] for tier in Catalog.read().tiers)
    assert owner.post("/models/download", json={"tier": 7}).status_code == 400
    assert owner.get("/models/download").json()["state"] == "idle"


def left_in(models: Path, name: str) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.name.startswith(name))


@pytest.mark.unit
@pytest.mark.parametrize("query, status, says", [
    ("", 400, "?name= is the model's file name"), ("?name=../up.gguf", 400, "without directories"),
    ("?name=up.bin", 400, "ending in .gguf"), ("?name=.up.gguf", 400, "not starting with a dot"),
    ("?name=" + "x" * 300 + ".gguf", 400, "at most 255 bytes"), ("?name=up%00.gguf", 400, "?name="),
    ("?name=tiny.gguf", 409, "'tiny.gguf' is installed already")])
def test_an_upload_under_a_bad_or_taken_name_is_refused(owner, query, status, says):
    refused = owner.put("/models/upload" + query, content=(owner.config.data.models / "tiny.gguf").read_bytes())
    assert refused.status_code == status and says in refused.json()["error"]["message"]
    assert refused.json()["error"]["param"] == "name"
    assert sorted(store.installed(owner.config.data.models)) == ["other.gguf", "tiny.gguf"]


@pytest.mark.unit
def test_an_upload_that_is_not_a_gguf_is_refused_and_nothing_is_left(owner):
    refused = owner.put("/models/upload?name=notes.gguf", content=b"GGML" + bytes(8192))
    assert refused.status_code == 400 and "is not a GGUF model" in refused.json()["error"]["message"]
    assert left_in(owner.config.data.models, "notes") == []
    assert owner.put("/models/upload?name=notes.gguf", content=b"GG").status_code == 400  # shorter than the magic
    assert left_in(owner.config.data.models, "notes") == []


@pytest.mark.unit
def test_an_upload_over_the_cap_is_refused_and_nothing_is_left(owner, monkeypatch):
    monkeypatch.setattr(models, "MODEL_MAX_BYTES", 4096)
    announced = owner.put("/models/upload?name=big.gguf", content=b"GGUF" + bytes(8192))
    unannounced = owner.put("/models/upload?name=big.gguf", content=(b"GGUF" + bytes(1020) for _ in range(8)))
    assert announced.status_code == unannounced.status_code == 413
    assert left_in(owner.config.data.models, "big") == []


@pytest.mark.unit
def test_a_second_upload_to_the_same_file_is_refused_and_leaves_the_first_alone(owner):
    first = files.partial(owner.config.data.models / "up.gguf")
    with first.open("wb") as held:  # the first upload's partial file, under its lock
        held.write(b"GGUF first")
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = owner.put("/models/upload?name=up.gguf", content=b"GGUF second")
    assert refused.status_code == 409 and "being uploaded already" in refused.json()["error"]["message"]
    assert first.read_bytes() == b"GGUF first" and "up.gguf" not in store.installed(owner.config.data.models)


# A catalog served from 127.0.0.1 (`paths.catalog`), for the real service: one tier whose server holds back
# all but its first HELD bytes until the test opens `GATE`, one pinned to a hash no file has, one no box fits.
HELD = 2 * 2**20
GATE = threading.Event()


class Tiers(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.path == "/gated.gguf":
            self.wfile.write(self.body[:HELD])
            self.wfile.flush()
            GATE.wait(60)
            self.wfile.write(self.body[HELD:])
        else:
            self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.unit
def test_speeds_are_the_build_machines_until_the_box_has_measured_its_own(two_models):
    """tiny.gguf stands as the catalog's SmolLM2-135M here: once a long reply has measured it, every tier's
    estimate is scaled by this box's speed against the table's."""
    models = DataDir(two_models).models
    catalog = two_models / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"tiers": [
        tier_entry("smollm2-135m", "http://127.0.0.1:9/a", (models / "tiny.gguf").stat().st_size, "0" * 64,
                   file="tiny.gguf"),
        tier_entry("qwen3-1.7b", "http://127.0.0.1:9/b", 10**9, "0" * 64, file="big.gguf")]}))
    cfg = config.parse({"data_dir": str(two_models), "paths": {"catalog": str(catalog)},
                        "inference": {"threads": 1, "context_tokens": 256}})
    token = tokens.create(database.connect(cfg.data.database), "test")
    table = speed.Table.read()
    with TestClient(create_app(cfg, models / "tiny.gguf", prove=False),
                    headers={"Authorization": f"Bearer {token}"}) as c:
        before = c.get("/models/catalog").json()
        assert [t["speed"] for t in before["tiers"]] == [
            speed.Estimate(table.measured(name, 1), False).as_dict() for name in ("smollm2-135m", "qwen3-1.7b")]
        assert before["speed_measured_on"] == table.machine
        assert c.post("/v1/completions", json={"model": "paladin", "prompt": "hi", "max_tokens": 20,
                                               "ignore_eos": True}).status_code == 200
        here, bigger = [t["speed"] for t in c.get("/models/catalog").json()["tiers"]]
        assert here["here"] and bigger["here"]
        assert bigger["tokens_per_second"] == pytest.approx(
            here["tokens_per_second"] * table.measured("qwen3-1.7b", 1) / table.measured("smollm2-135m", 1), rel=0.05)
        tiny = next(m for m in c.get("/models").json()["models"] if m["name"] == "tiny.gguf")
        assert (tiny["tier"], tiny["speed"]) == ("smollm2-135m", here)


@pytest.fixture(scope="module")
def catalog_service(tiny_model, tmp_path_factory):
    """The real service with a catalog of local tiers; header_seconds 2 so that a stalled upload ends soon."""
    Tiers.body = tiny_model.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tiers)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    pin = hashlib.sha256(Tiers.body).hexdigest()
    tiers = [tier_entry(name, f"{url}/{name}.gguf", len(Tiers.body), sha256, layers=layers) for name, layers, sha256 in
             [("gated", 2, pin), ("corrupt", 2, "0" * 64), ("huge", 2**30, pin)]]
    data = tmp_path_factory.mktemp("box")
    catalog = data / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"tiers": tiers}))
    running = Service(tiny_model, data, config={"server": UNLIMITED["server"] | {"header_seconds": 2}},
                      system={"paths": {"catalog": str(catalog)}})
    running.models = DataDir(data).models
    yield running
    GATE.set()
    running.stop()
    httpd.shutdown()


def polled(client, until, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while not until(status := client.get("/models/download").json()):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


@pytest.mark.service
def test_the_catalog_says_what_fits_this_box(catalog_service):
    with catalog_service.client() as c:
        listed = c.get("/models/catalog").json()
    box = psutil.virtual_memory().total
    reserve = box * (15 if box <= 8 * 2**30 else 10) // 100  # the governor's default, as the box has no setting
    assert (listed["box_ram"], listed["headroom"], listed["reserve"]) == (box, HEADROOM, reserve)
    small = len(Tiers.body) + listed["context"] * 2 * 1 * 64 * 4  # file, and two layers' keys and values
    huge = len(Tiers.body) + listed["context"] * 2**30 * 64 * 4
    assert [(t["name"], t["fits"], t["ram"], t["needs"]) for t in listed["tiers"]] == [
        ("gated", True, small, small + HEADROOM + reserve), ("corrupt", True, small, small + HEADROOM + reserve),
        ("huge", False, huge, huge + HEADROOM + reserve)]
    assert [t["installed"] for t in listed["tiers"]] == [(catalog_service.models / t["file"]).is_file() for t in listed["tiers"]]
    assert [(t["file"], t["size"], t["licence"], t["tools"]) for t in listed["tiers"]] == [
        (f"{name}.gguf", len(Tiers.body), "Apache-2.0", True) for name in ("gated", "corrupt", "huge")]
    # Both small tiers take far less than half of any box: the larger file wins, and ties go to the first.
    assert listed["recommended"]["tier"] == "gated" and "at most half of this box's" in listed["recommended"]["why"]


@pytest.mark.service
def test_a_download_reports_its_progress_until_installed_and_one_runs_at_a_time(catalog_service):
    size = len(Tiers.body)
    try:
        with catalog_service.client() as c:
            started = c.post("/models/download", json={"tier": "gated"})
            assert started.status_code == 202 and started.json()["state"] == "downloading"
            second = c.post("/models/download", json={"tier": "corrupt"})
            assert second.status_code == 409 and "'gated' is downloading" in second.json()["error"]["message"]
            midway = polled(c, lambda status: status["done"] == HELD)
            assert midway.items() >= {"state": "downloading", "tier": "gated", "done": HELD, "total": size,
                                      "error": None}.items()
            assert midway["speed"] > 0 and midway["seconds_left"] >= 0
            assert "gated.gguf" not in store.installed(catalog_service.models)
            assert c.delete("/models/download").json() == {"stopping": "gated"}
            # The server still holds the rest back: the stop ends the stalled read at once, not after the 30
            # seconds that tell a stall.
            stopped = polled(c, lambda status: status["state"] != "downloading", seconds=10)
            assert stopped["state"] == "stopped" and stopped["done"] == HELD and "resumes" in stopped["error"]
            GATE.set()
            assert c.delete("/models/download").status_code == 409  # none runs now
            assert c.post("/models/download", json={"tier": "gated"}).status_code == 202
            assert polled(c, lambda status: status["state"] != "downloading").items() >= {
                "state": "done", "tier": "gated", "done": size, "total": size, "error": None}.items()
            gated = next(m for m in c.get("/models").json()["models"] if m["name"] == "gated.gguf")
            tier = next(t for t in c.get("/models/catalog").json()["tiers"] if t["name"] == "gated")
            assert gated == {"name": "gated.gguf", "id": "gated", "size": size, "tier": "gated", "served": False,
                             "licence": tier["licence"], "ram": tier["ram"], "speed": None}  # not in the speed table
            again = c.post("/models/download", json={"tier": "gated"})  # installed: nothing to fetch
            assert again.status_code == 200 and again.json()["state"] == "done"
    finally:
        GATE.set()
    assert (catalog_service.models / "gated.gguf").read_bytes() == Tiers.body


@pytest.mark.service
def test_a_download_that_fails_its_pin_is_reported_and_installs_nothing(catalog_service):
    with catalog_service.client() as c:
        assert c.post("/models/download", json={"tier": "corrupt"}).status_code == 202
        failed = polled(c, lambda status: status["state"] != "downloading")
    assert failed["state"] == "failed" and failed["tier"] == "corrupt"
    assert "SHA-256 mismatch" in failed["error"] and "nothing was installed" in failed["error"]
    assert "corrupt.gguf" not in store.installed(catalog_service.models) and not any((catalog_service.models / ".partial").iterdir())


@pytest.mark.service
def test_an_upload_streams_past_the_body_limit_and_answers_its_sha256(catalog_service):
    with catalog_service.client() as c:
        uploaded = c.put("/models/upload?name=uploaded.gguf", content=Tiers.body)  # ~6 MB against 1 MiB
        assert uploaded.status_code == 201 and uploaded.json() == {
            "name": "uploaded.gguf", "id": "uploaded", "size": len(Tiers.body),
            "sha256": hashlib.sha256(Tiers.body).hexdigest(), "tier": None}
        assert "uploaded.gguf" in [m["name"] for m in c.get("/models").json()["models"]]
        assert c.put("/models/default", json={"model": "uploaded.gguf"}).json()["model"] == "uploaded"
    assert (catalog_service.models / "uploaded.gguf").read_bytes() == Tiers.body


@pytest.mark.service
def test_an_upload_of_a_file_the_catalog_pins_must_match_the_pin(catalog_service, other_model):
    with catalog_service.client() as c:
        refused = c.put("/models/upload?name=huge.gguf", content=other_model.read_bytes())
        assert refused.status_code == 400 and "huge.gguf must have SHA-256" in refused.json()["error"]["message"]
        assert left_in(catalog_service.models, "huge") == []
        pinned = c.put("/models/upload?name=huge.gguf", content=Tiers.body)
        assert pinned.status_code == 201 and pinned.json()["tier"] == "huge"


@pytest.mark.service
def test_a_model_that_would_crash_llama_cpp_is_refused_and_the_worker_serves_on(catalog_service, tiny_model, tmp_path):
    """Proven in a child first (inference/probe.py): uploaded, it is refused and not kept; put into the store
    another way (a USB import) and chosen, the swap is refused; the worker never maps it and never dies."""
    bad = malformed_model(tiny_model, tmp_path / "bad.gguf").read_bytes()
    with catalog_service.client() as c:
        before = c.get("/health").json()
        assert before["cpu_variant"] == llama.ranked_variants()[0]
        refused = c.put("/models/upload?name=bad.gguf", content=bad)
        assert refused.status_code == 422 and "crashed on it (SIGABRT)" in refused.json()["error"]["message"]
        assert left_in(catalog_service.models, "bad") == []
        (catalog_service.models / "imported.gguf").write_bytes(bad)
        chosen = c.put("/models/default", json={"model": "imported.gguf"})
        assert chosen.status_code == 422 and "GGML_ASSERT" in chosen.json()["error"]["message"], chosen.text
        assert c.post("/v1/chat/completions", json={"model": "paladin", "messages": HI, "max_tokens": 2}).status_code == 200
        assert c.get("/health").json()["model"] == before["model"]
    assert catalog_service.output().count("Booting worker") == 1  # the first worker, never restarted


@pytest.mark.service
def test_a_stalled_upload_is_cut_off_leaving_nothing_and_the_name_free(catalog_service):
    with socket.create_connection(("127.0.0.1", catalog_service.port), timeout=30) as s:
        s.sendall(f"PUT /models/upload?name=stalled.gguf HTTP/1.1\r\nHost: box\r\nAuthorization: Bearer {catalog_service.token}"
                  "\r\nContent-Length: 1000000\r\n\r\nGGUF".encode())
        answer = http.client.HTTPResponse(s)  # read while nothing more is sent, longer than header_seconds
        answer.begin()
        assert answer.status == 408 and "nothing arrived for 2 seconds" in json.loads(answer.read())["error"]["message"]
    assert left_in(catalog_service.models, "stalled") == []
    with catalog_service.client() as c:
        assert c.put("/models/upload?name=stalled.gguf", content=Tiers.body).status_code == 201
