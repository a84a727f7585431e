"""The owner's choice of model: in-process against real llama.cpp, then the real service across swaps
and a restart."""

import queue
import threading

import pytest
from starlette.testclient import TestClient

from appliance import config, db as database, store, tokens
from appliance.web.app import create_app
from served import UNLIMITED, Service

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def owner(two_models):
    cfg = config.parse({"data_dir": str(two_models), "inference": {"threads": 1, "context_tokens": 256}})
    token = tokens.create(database.connect(cfg.database_path), "test")
    with TestClient(create_app(cfg, cfg.models_path / "tiny.gguf"), headers={"Authorization": f"Bearer {token}"}) as c:
        c.config = cfg
        yield c


def saved(cfg: config.Config) -> str:
    return config.load(None, {"data_dir": cfg.data_dir}).inference.model


@pytest.mark.unit
def test_the_store_is_listed_with_the_served_model(owner):
    listed = owner.get("/models").json()["models"]
    assert [(m["name"], m["id"], m["tier"], m["served"]) for m in listed] == [
        ("other.gguf", "other", None, False), ("tiny.gguf", "tiny", None, True)]
    assert listed[1]["size"] == (owner.config.models_path / "tiny.gguf").stat().st_size


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
    (owner.config.models_path / "broken.gguf").write_bytes(b"GGUF" + bytes(100))
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
