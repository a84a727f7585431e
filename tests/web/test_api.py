"""The HTTP API in-process (Starlette's test client, real llama.cpp on a generated model)."""

import base64
import json

import pytest
from starlette.testclient import TestClient

from appliance import channel, config, db as database, tokens
from appliance.web import updates
from appliance.web.app import create_app, from_the_box
from appliance.layout import DataDir

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def api(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    # Unlimited rate: the module's tests send hundreds of requests as one client, at once.
    cfg = config.parse({"data_dir": str(data), "server": {"max_body_bytes": 4096, "requests_per_second": 0},
                        "inference": {"threads": 1, "context_tokens": 256, "max_tokens": 16}})
    token = tokens.create(database.connect(cfg.data.database), "test")
    with TestClient(create_app(cfg, tiny_model, prove=False), headers={"Authorization": f"Bearer {token}"}) as client:
        client.data_dir = data
        yield client


def chat(api, **body):
    return api.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]} | body)


def test_health_is_public_and_names_the_model(api):
    response = api.get("/health", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["model"] == "tiny"


@pytest.mark.parametrize("path", ["/v1/models", "/api/tags", "/metrics", "/conversations"])
def test_everything_else_needs_a_token(api, path):
    response = api.get(path, headers={"Authorization": "Bearer pal_wrong"})
    assert response.status_code == 401
    # Bearer only: a browser that once showed a Basic prompt would attach its answer to other sites' posts.
    assert response.headers["www-authenticate"] == 'Bearer realm="paladin"'


def basic(token: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"any:{token}".encode()).decode()}


def test_basic_credentials_change_nothing_from_another_site(api):
    """What a browser holding Basic credentials would send on a form post from another origin: refused, while
    the same request from an app (no fetch metadata) or with a Bearer token is served."""
    token = api.headers["authorization"].split()[1]
    pull = {"model": "nothing-here"}
    for site in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                 {"Origin": "https://evil.example"}, {"Origin": "null"}):
        refused = api.post("/api/pull", json=pull, headers=basic(token) | site)
        assert refused.status_code == 403 and "another site" in refused.json()["error"], (site, refused.text)
        assert api.post("/api/pull", json=pull, headers=site).status_code == 404  # Bearer: the caller's own choice
    assert api.post("/api/pull", json=pull, headers=basic(token)).status_code == 404  # an app: no fetch metadata
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert api.post("/api/pull", json=pull, headers=basic(token) | own).status_code == 404
    assert api.get("/api/tags", headers=basic(token) | {"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_a_json_body_must_say_so_unless_a_bearer_token_sent_it(api):
    """An HTML form can post text/plain that parses as JSON, never application/json."""
    token = api.headers["authorization"].split()[1]
    body = json.dumps({"model": "nothing-here"})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = basic(token) | ({"Content-Type": kind} if kind else {})
        refused = api.post("/api/pull", content=body, headers=headers)
        assert refused.status_code == 415 and "application/json" in refused.json()["error"], (kind, refused.text)
        assert api.post("/api/pull", content=body, headers={"Content-Type": kind or ""}).status_code == 404  # curl -d
    typed = basic(token) | {"Content-Type": "application/json; charset=utf-8"}
    assert api.post("/api/pull", content=body, headers=typed).status_code == 404


def test_chat_completion_with_usage_and_max_tokens(api):
    body = chat(api, max_tokens=7, temperature=0).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 7
    assert chat(api, max_tokens=7, temperature=0).json()["choices"] == body["choices"]  # deterministic


def test_seed_makes_sampling_repeatable(api):
    a = chat(api, max_tokens=10, temperature=1.0, seed=42).json()["choices"][0]["message"]["content"]
    b = chat(api, max_tokens=10, temperature=1.0, seed=42).json()["choices"][0]["message"]["content"]
    assert a == b


def test_streaming_chat_is_sse_ending_in_done(api):
    with api.stream("POST", "/v1/chat/completions", json={
            "model": "paladin", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5,
            "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_completions_and_stop(api):
    body = api.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 30, "temperature": 0}).json()
    text = body["choices"][0]["text"]
    stopped = api.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 30, "temperature": 0,
                                                "stop": [text[5:8]]}).json()["choices"][0]
    assert stopped["text"] == text[:text.index(text[5:8])] and stopped["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, None),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
    (b'{"model": "tiny", "messages": []}', 400, "invalid_value"),
    (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "invalid_value"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}', 400, "invalid_value"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"}', 400, "invalid_value"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4.5}', 400, "invalid_value"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"word " * 300 + b'"}]}', 400,
     "context_length_exceeded"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413, "body_too_large"),
])
def test_bad_requests_get_specific_openai_errors(api, body, status, code):
    response = api.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["code"] == code


def test_models_lists_the_served_model_and_the_alias(api):
    assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["tiny", "paladin"]


def test_ollama_chat_streams_ndjson_by_default(api):
    with api.stream("POST", "/api/chat", json={"model": "tiny:latest", "messages": [{"role": "user", "content": "hi"}],
                                                "options": {"num_predict": 4}}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(not line["done"] for line in lines[:-1])
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 4 and lines[-1]["done_reason"] == "length"


def test_ollama_generate_tags_show_version_and_errors(api):
    body = api.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                           "options": {"num_predict": 3}}).json()
    assert body["done"] and body["eval_count"] == 3 and body["response"]
    assert api.get("/api/tags").json()["models"][0]["name"] == "tiny:latest"
    assert api.post("/api/show", json={"model": "tiny"}).json()["details"]["format"] == "gguf"
    assert api.get("/api/version").json()["version"]
    missing = api.post("/api/chat", json={"model": "llama3", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]


def test_conversations_are_kept(api):
    conversation = api.post("/conversations", json={"title": "First"}).json()
    with api.stream("POST", f"/conversations/{conversation['id']}/messages", json={"content": "hello"}) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
    reply = "".join(e.get("text", "") for e in events)
    assert events[-1]["done"]
    stored = api.get(f"/conversations/{conversation['id']}").json()["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [("user", "hello"), ("assistant", reply)]
    assert api.delete(f"/conversations/{conversation['id']}").status_code == 204
    assert api.get(f"/conversations/{conversation['id']}").status_code == 404


def test_a_conversation_deleted_while_its_reply_streams_breaks_nothing(api):
    conversation = api.post("/conversations", json={"title": "doomed"}).json()
    with api.stream("POST", f"/conversations/{conversation['id']}/messages", json={"content": "hello"}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert api.delete(f"/conversations/{conversation['id']}").status_code == 204
        list(lines)
    after = api.post("/conversations", json={"title": "after"}).json()
    with api.stream("POST", f"/conversations/{after['id']}/messages", json={"content": "hi"}) as response:
        assert response.status_code == 200 and list(response.iter_lines())
    assert [m["role"] for m in api.get(f"/conversations/{after['id']}").json()["messages"]] == ["user", "assistant"]


def test_metrics_count_requests_and_tokens(api):
    chat(api, max_tokens=2)
    text = api.get("/metrics").text
    assert 'paladin_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "paladin_model_loaded 1" in text
    assert "paladin_tokens_generated_total" in text


def test_metrics_labels_are_route_templates_whatever_the_paths(api):
    """Made-up paths, ids and injected quotes and newlines add no label and no line."""
    before = api.get("/metrics").text.count("\n")
    for n in range(200):
        api.get(f"/nothing/{n}", headers={"Authorization": ""})
        api.get(f'/conversations/{n}%22%0Afake_metric 1', headers={"Authorization": ""})
    text = api.get("/metrics").text
    assert text.count("\n") <= before + 3  # at most the new label sets: unmatched/404, {id}/401, /metrics
    assert 'route="unmatched",status="404"' in text and 'route="/conversations/{id}",status="401"' in text
    assert "fake_metric" not in text


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"max_tokens": ' + b"9" * 5000 + b"}",
                                  b'{"model": "\xff"}'], ids=["nested", "long-number", "bad-utf8"])
def test_hostile_json_is_a_400_not_a_500(tmp_path, body):
    cfg = config.parse({"data_dir": str(tmp_path)})  # the default body limit (1 MiB) lets these through
    token = tokens.create(database.connect(cfg.data.database), "test")
    with TestClient(create_app(cfg, prove=False), headers={"Authorization": f"Bearer {token}"}) as client:
        for path in ("/v1/chat/completions", "/api/chat"):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, response.text
            assert "not valid JSON" in response.text or "nested too deeply" in response.text


def test_ignore_eos_generates_exactly_max_tokens(api):
    body = api.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 9, "ignore_eos": True}).json()
    assert body["usage"]["completion_tokens"] == 9


def test_an_update_request_is_handed_to_the_updater(api):
    response = api.post("/update", json={"source": "online", "reboot": False})
    assert response.status_code == 202
    inbox = DataDir(api.data_dir).requests
    assert json.loads((inbox / "update.json").read_text()) == {"source": "online", "reboot": False}
    assert api.get("/update").json()["pending"] is True
    assert channel.take(api.data_dir, "update") == channel.UpdateRequest(source="online", reboot=False)


def test_an_update_request_names_a_configured_source_never_a_url(api):
    response = api.post("/update", json={"source": "http://10.0.0.2/repo"})
    assert response.status_code == 400 and "the configured repository" in response.json()["error"]["message"]
    assert not (DataDir(api.data_dir).requests / "update.json").exists()


def test_the_owner_sets_the_update_repository(api):
    refused = api.put("/update/settings", json={"url": "ftp://x/repo"})
    assert refused.status_code == 400
    assert "update.url: 'ftp://x/repo' is not allowed" in refused.json()["error"]["message"]
    saved = api.put("/update/settings", json={"url": "http://10.0.0.2/repo", "automatic": True})
    assert saved.status_code == 200 and saved.json()["url"] == "http://10.0.0.2/repo"
    owner = config.load(None, {"data_dir": str(api.data_dir)})
    assert (owner.update.url, owner.update.automatic) == ("http://10.0.0.2/repo", True)
    assert api.put("/update/settings", json={"command": "rm -rf /"}).status_code == 400


def test_a_bundle_upload_streams_past_the_body_limit(api):
    bundle = bytes(range(256)) * 40  # 10 KiB against the 4 KiB JSON body limit
    response = api.put("/update/bundle?reboot=false", content=bundle)
    assert response.status_code == 202 and response.json()["bytes"] == len(bundle)
    assert (DataDir(api.data_dir).requests / "update.bundle").read_bytes() == bundle
    assert json.loads((DataDir(api.data_dir).requests / "update.json").read_text()) == {"source": "bundle",
                                                                                      "reboot": False}


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                                      ("127.0.0.2", True), ("10.0.0.2", False), ("::ffff:10.0.0.2", False),
                                      ("testclient", False), (None, False)])
def test_the_box_itself_includes_loopback_on_a_dual_stack_socket(host, ok):
    assert from_the_box(host) is ok


def test_a_refused_upload_leaves_nothing_behind(api, monkeypatch):
    monkeypatch.setattr(updates, "BUNDLE_MAX_BYTES", 4096)
    response = api.put("/update/bundle", content=(b"x" * 1024 for _ in range(10)))
    assert response.status_code == 413
    assert not channel.attachment(api.data_dir, "update", "bundle.partial").exists()


def test_the_inference_probe_is_only_for_the_box_itself(api):
    response = api.get("/health?probe=1", headers={"Authorization": ""})
    assert response.status_code == 403


def test_an_error_after_the_stream_began_is_sent_in_each_apis_shape(api, monkeypatch):
    """Fault injection: llama.cpp fails after a few tokens.  The status line is sent already, so the error
    comes as the stream's last object, where the openai and ollama clients look for it."""
    from appliance.inference import llama

    calls = {"n": 0}
    advance = llama.Model.advance

    def failing(self, token):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise RuntimeError("injected decode failure")
        advance(self, token)
    monkeypatch.setattr(llama.Model, "advance", failing)
    with api.stream("POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "injected decode failure" in error["message"]
    with api.stream("POST", "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}) as r:
        last = json.loads([line for line in r.iter_lines() if line][-1])
    assert "injected decode failure" in last["error"]
    monkeypatch.undo()
    assert chat(api).status_code == 200  # the engine lives on
