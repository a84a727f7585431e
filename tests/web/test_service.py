"""The real service: `paladin serve` (gunicorn + uvicorn worker + llama.cpp) driven by real clients."""

import base64
import shutil
import socket
import concurrent.futures
import json
import threading
import time

import httpx
import ollama
import openai
import psutil
import pytest

from appliance import config
from appliance.layout import DataDir
from buildhost.qemu import free_port
from tests.support.catalog import served_catalog
from tests.support.served import PALADIN, UNLIMITED, Service, serve_argv

pytestmark = pytest.mark.service


def test_ready_only_after_the_model_is_loaded_then_watchdog_pings(service):
    time.sleep(1)
    messages = list(service.messages)
    assert "READY=1" in messages
    assert any(m.startswith("STATUS=serving tiny") for m in messages)
    ready = messages.index("READY=1")
    assert any(m.startswith("STATUS=loading") for m in messages[:ready])
    assert messages.count("WATCHDOG=1") >= 3  # WATCHDOG_USEC=0.4 s: pinged every 0.2 s from the event loop


def test_every_response_says_nosniff_and_names_no_server(service):
    """JSON, a page, a static file, an error, a redirect and a stream: uvicorn adds the header to each."""
    with service.client() as client:
        responses = [client.get(path) for path in ("/health", "/login", "/static/site.css", "/no/such/path", "/")]
        with client.stream("POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": True}) as stream:
            stream.read()
            responses.append(stream)
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", (response.url, response.headers)
        assert "server" not in response.headers, response.url


def test_one_worker_holds_the_model(service):
    master = psutil.Process(service.process.pid)
    workers = master.children()
    assert len(workers) == 1
    assert any(m.path.endswith("tiny.gguf") for m in workers[0].memory_maps())  # llama.cpp mmaps the weights
    assert not any(m.path.endswith("tiny.gguf") for m in master.memory_maps())


def test_openai_python_client_lists_models_and_completes_with_and_without_streaming(service):
    client = openai.OpenAI(base_url=service.url + "/v1", api_key=service.token)
    assert [m.id for m in client.models.list()] == ["tiny", "paladin"]
    stream = client.chat.completions.create(model="paladin", messages=[{"role": "user", "content": "Hi"}],
                                            stream=True, max_tokens=12)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert whole.choices[0].message.content and whole.usage.completion_tokens == 5
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=service.url + "/v1", api_key="pal_nope").models.list()


def test_ollama_client_through_a_url_with_the_token_as_basic_password(service):
    # Home Assistant's Ollama integration takes only a URL; credentials ride in it as HTTP Basic.
    basic = base64.b64encode(f"homeassistant:{service.token}".encode()).decode()
    client = ollama.Client(host=service.url, headers={"Authorization": f"Basic {basic}"})
    assert [m.model for m in client.list().models] == ["tiny:latest", "paladin:latest"]
    parts = [chunk.message.content for chunk in
             client.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True,
                         options={"num_predict": 6})]
    assert len(parts) >= 2
    reply = client.generate(model="tiny", prompt="Hi", options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3
    details = client.show("tiny").details
    assert (details.format, details.quantization_level) == ("gguf", "F32")  # as Ollama names a file type


def test_concurrent_clients_are_queued_and_overflow_gets_retry_after(service):
    def one(_):
        with service.client() as c:
            return c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 60})

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(one, range(24)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 16  # queue_size 16 plus the one generating
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "2" and r.json()["error"]["code"] == "queue_full"


def test_disconnecting_client_stops_its_generation(service):
    with service.client() as c:
        before = c.get("/metrics").text
        with c.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3000,
                                                        "stream": True}) as response:
            next(response.iter_lines())
        # a queued follow-up runs promptly: the abandoned 3000-token stream no longer holds the model
        follow = c.post("/v1/completions", json={"model": "tiny", "prompt": "y", "max_tokens": 3})
        after = c.get("/metrics").text
    assert follow.status_code == 200

    def generated(text):
        return float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("paladin_tokens_generated_total")))
    assert generated(after) - generated(before) < 3000


def test_regenerate_while_a_reply_streams_or_just_stopped_waits_and_replaces_it(service):
    """Regenerate pressed right after Stop reaches the service before it has noticed the hang-up: the new
    reply waits for the stopped one to be stored and takes its place, never a second reply beside it."""
    with service.client() as first, service.client() as second:
        path = f"/conversations/{first.post('/conversations', json={'title': 'Turns'}).json()['id']}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with first.stream("POST", path + "/messages", json={"content": "hello"}) as streaming:
                next(line for line in streaming.iter_lines() if '"text"' in line)
                again = pool.submit(second.post, path + "/regenerate")  # 1024 tokens: still streaming
                time.sleep(0.1)  # the regenerate has arrived (without turns it would answer beside the reply)
            assert again.result().status_code == 200
        stored = second.get(path).json()["messages"]
    assert [(m["role"], m["finish"]) for m in stored] == [("user", None), ("assistant", "length")]
    events = [json.loads(line.removeprefix("data: ")) for line in again.result().text.splitlines() if line]
    assert stored[1]["content"] == "".join(event.get("text", "") for event in events)


def test_sigterm_lets_an_open_stream_finish_then_exits_cleanly(tiny_model, tmp_path):
    running = Service(tiny_model, tmp_path)
    lines = []
    # A stream that needs a third of the worker's grace period at the speed measured now, so the test
    # asks the same of a loaded machine as of an idle one.
    with running.client() as c:
        started = time.monotonic()
        c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 200, "ignore_eos": True})
        per_second = 200 / (time.monotonic() - started)
    grace = config.Config().server.graceful_timeout - 2
    tokens = max(300, min(4000, int(per_second * grace / 3)))  # 4000: within the 4096-token context

    def read_stream():
        with running.client() as c, c.stream("POST", "/v1/completions", json={
                "model": "tiny", "prompt": "x", "max_tokens": tokens, "stream": True}) as response:
            lines.extend(response.iter_lines())

    reader = threading.Thread(target=read_stream)
    reader.start()
    while len(lines) < 3 and reader.is_alive():
        time.sleep(0.01)
    at_sigterm = len(lines)
    assert running.stop() == 0
    reader.join(30)
    assert len(lines) > at_sigterm + 100  # the stream was in flight when SIGTERM came
    assert [line for line in lines if line][-1] == "data: [DONE]"  # and it finished within the grace period
    assert "STOPPING=1" in running.messages


def test_bad_config_fails_at_start_with_key_value_and_allowed(tiny_model, tmp_path):
    DataDir(tmp_path).owner_config.write_text("inference:\n  context_tokens: 10\n")
    import subprocess
    out = subprocess.run([PALADIN, "serve", "--model", tiny_model, "--data-dir", tmp_path], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "inference.context_tokens: 10 is out of range (allowed: 64 to 131072)" in out.stderr


def test_health_reports_no_model_when_started_without_one(tmp_path):
    import subprocess
    port = free_port()
    process = subprocess.Popen(serve_argv(tmp_path, port), stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.ConnectError:
                time.sleep(0.2)
        assert response.json()["status"] == "no_model"
    finally:
        process.terminate()
        process.wait(30)


def test_the_boot_assessment_probe_generates_one_token(service):
    with service.client() as client:
        probe = client.get("/health?probe=1", headers={"Authorization": ""}).json()
    assert probe["probe"] == "ok" and probe["tokens"] == 1


def test_slow_idle_and_too_many_clients_are_cut_off_and_others_served(tiny_model, tmp_path):
    DataDir(tmp_path).owner_config.write_text("server:\n  header_seconds: 2\n  max_connections: 16\n")
    running = Service(tiny_model, tmp_path)
    idle = []
    try:
        for n in range(20):  # half say nothing, half never finish their headers (slowloris)
            idle.append(socket.create_connection(("127.0.0.1", running.port)))
            idle[-1].sendall(b"GET /health HTTP/1.1\r\nHost: box\r\n" if n % 2 else b"")
        time.sleep(0.5)
        with running.client() as c:
            assert c.get("/health").status_code == 503  # over max_connections: refused at once, no hang
        time.sleep(3)  # past header_seconds
        for s in idle:
            s.settimeout(5)
            assert s.recv(4096) == b"", "the box hangs up on a client that sends no request"
        with running.client() as c:
            assert c.get("/health").status_code == 200
            with socket.create_connection(("127.0.0.1", running.port)) as slow:  # headers, then a trickle
                slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: box\r\nContent-Type: application/json\r\n"
                             b"Authorization: Bearer " + running.token.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
                slow.settimeout(10)
                assert slow.recv(4096).startswith(b"HTTP/1.1 408")
            assert c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        for s in idle:
            s.close()
        running.stop()


@pytest.mark.service
def test_one_address_cannot_hold_every_connection(tiny_model, tmp_path):
    """A device holding its connections_per_client is hung up on at its next, while another address is served:
    max_connections is never reached by one device alone."""
    DataDir(tmp_path).owner_config.write_text("server:\n  max_connections: 16\n  connections_per_client: 4\n")
    running = Service(tiny_model, tmp_path)
    box = ("127.0.0.1", running.port)
    held = [socket.create_connection(box, source_address=("127.0.0.3", 0)) for _ in range(4)]
    try:
        time.sleep(0.5)
        with socket.create_connection(box, source_address=("127.0.0.3", 0)) as fifth:
            fifth.settimeout(5)
            assert fifth.recv(4096) == b"", "a fifth connection from one address is hung up on at once"
        with socket.create_connection(box, source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /health HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
            other.settimeout(10)
            assert other.recv(4096).startswith(b"HTTP/1.1 200")
        held.pop().close()
        time.sleep(0.5)
        with socket.create_connection(box, source_address=("127.0.0.3", 0)) as again:  # one freed, one more
            again.sendall(b"GET /health HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
            again.settimeout(10)
            assert again.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
        running.stop()


def test_ollama_client_as_open_webui_uses_it_ps_delete_images_and_a_chat_past_the_context(service, tiny_model):
    client = ollama.Client(host=service.url, headers={"Authorization": f"Bearer {service.token}"})
    [loaded] = client.ps().models
    assert (loaded.model, loaded.size_vram, loaded.context_length) == ("tiny:latest", 0, 4096)
    assert 0.9 * tiny_model.stat().st_size < loaded.size <= tiny_model.stat().st_size  # the weights in memory

    # Home Assistant's prompt carries the whole home: a history twice the context is cut, as Ollama cuts it.
    history = []
    for n in range(40):
        history += [{"role": "user", "content": f"state of device {n}: " + "on " * 120},
                    {"role": "assistant", "content": "noted " * 20}]
    reply = client.chat(model="tiny", messages=[{"role": "system", "content": "You run the house."}] + history
                        + [{"role": "user", "content": "Lights off"}], options={"num_predict": 4})
    assert reply.done and reply.eval_count == 4 and reply.prompt_eval_count + 4 <= 4096
    smaller = client.chat(model="tiny", messages=history + [{"role": "user", "content": "Lights off"}],
                          options={"num_predict": 4, "num_ctx": 512}, keep_alive="5m")
    assert smaller.prompt_eval_count + 4 <= 512 < reply.prompt_eval_count
    with service.client() as c:
        refused = c.post("/api/chat", json={"model": "tiny", "messages": history[:1], "keep_alive": [1]})
    assert refused.status_code == 400 and "'keep_alive'" in refused.json()["error"]
    metrics = service.client().get("/metrics").text
    dropped = int(next(line.split()[1] for line in metrics.splitlines()
                       if line.startswith("paladin_prompt_tokens_dropped_total")))
    assert dropped > 4096

    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="tiny", messages=[{"role": "user", "content": "What is this?", "images": ["aGk="]}])
    assert err.value.status_code == 400 and "'messages[0].images'" in err.value.error

    models = DataDir(service.data_dir).models
    models.mkdir(exist_ok=True)
    shutil.copy(tiny_model, models / "spare.gguf")
    assert client.delete("spare:latest").status == "success"
    assert not (models / "spare.gguf").exists()
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("llama3.2:latest")
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_unknown_paths_and_methods_answer_in_each_apis_error_shape(service):
    with service.client() as c:
        ollama_404 = c.get("/api/nope")
        openai_404 = c.get("/v1/nope")
        wrong_method = c.get("/api/chat")
    assert ollama_404.status_code == 404 and "/api/nope" in ollama_404.json()["error"]
    assert openai_404.status_code == 404 and openai_404.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "takes POST" in wrong_method.json()["error"]


def test_openai_client_is_told_what_the_box_does_not_do(service):
    client = openai.OpenAI(base_url=service.url + "/v1", api_key=service.token)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], logprobs=True)
    assert err.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]}])
    assert "'messages[0].content[1]'" in err.value.body["message"] and "image_url" in err.value.body["message"]


def test_ollama_pull_fetches_catalog_tiers_by_ollamas_names_with_progress_and_errors(tiny_model, other_model,
                                                                                     tmp_path):
    """Home Assistant's config flow pulls the model typed in its field, by Ollama's name: a catalog tier
    downloads (over real HTTP), anything else is a 404 that lists what exists, a download that fails says why
    in the stream, and the pulled model then answers to that name."""
    data = tmp_path / "data"
    DataDir(data).models.mkdir(parents=True)
    shutil.copy(tiny_model, DataDir(data).models / "tiny.gguf")
    with served_catalog(tmp_path, other_model, ollama="qwen2.5:1.5b", latest={"llama3.2": "llama3.2:3b"}) as catalog:
        service = Service(None, data, config=UNLIMITED, system={"paths": {"catalog": str(catalog)}})
        try:
            client = ollama.Client(host=service.url, headers={"Authorization": f"Bearer {service.token}"})
            with pytest.raises(ollama.ResponseError) as err:
                client.pull("llama3.2:latest")  # what Home Assistant's field offers first
            assert err.value.status_code == 404 and "Ollama's 'llama3.2' is llama3.2:3b" in err.value.error
            assert "Its tiers: helper (qwen2.5:1.5b) (installed: tiny.gguf)" in err.value.error

            (tmp_path / "www" / "helper.gguf").write_bytes(b"GGUF" + bytes(other_model.stat().st_size - 4))
            with pytest.raises(ollama.ResponseError) as err:
                list(client.pull("qwen2.5:1.5b", stream=True))
            assert "pulling 'helper' failed" in err.value.error and "SHA-256 mismatch" in err.value.error
            assert not (DataDir(data).models / "helper.gguf").exists()

            shutil.copy(other_model, tmp_path / "www" / "helper.gguf")
            updates = [u.status for u in client.pull("qwen2.5:1.5b", stream=True)]
            assert updates[0] == "pulling manifest" and updates[-1] == "success"
            assert (DataDir(data).models / "helper.gguf").read_bytes() == other_model.read_bytes()
            assert client.pull("helper:latest").status == "success"  # installed already: nothing to fetch
            assert client.pull("tiny").status == "success"

            with service.client() as owner:
                assert owner.put("/models/default", json={"model": "qwen2.5:1.5b"}).json()["model"] == "helper"
            assert "qwen2.5:1.5b" in [m.model for m in client.list().models]
            assert client.show("qwen2.5:1.5b").modelinfo["general.architecture"]
            reply = client.chat(model="qwen2.5:1.5b", messages=[{"role": "user", "content": "Hi"}],
                                options={"num_predict": 4})
            assert reply.model == "qwen2.5:1.5b" and reply.done and reply.eval_count > 0
        finally:
            service.stop()


def test_embeddings_as_open_webui_and_the_openai_client_ask_for_them(service):
    import math

    client = ollama.Client(host=service.url, headers={"Authorization": f"Bearer {service.token}"})
    both = client.embed(model="tiny", input=["the kitchen light", "the hall lamp"]).embeddings
    again = client.embed(model="tiny", input="the kitchen light").embeddings
    assert len(both) == 2 and len(both[0]) == len(both[1]) == 128  # the generated model's width
    assert all(abs(math.hypot(*v) - 1) < 1e-6 for v in both) and again[0] == both[0] and both[0] != both[1]
    assert client.embeddings(model="tiny", prompt="the hall lamp").embedding == both[1]
    sdk = openai.OpenAI(base_url=service.url + "/v1", api_key=service.token)
    answer = sdk.embeddings.create(model="tiny", input=["the kitchen light"])  # sent as base64 float32
    assert [round(x, 5) for x in answer.data[0].embedding] == [round(x, 5) for x in both[0]]
    assert answer.usage.prompt_tokens > 0
    with service.client() as c:
        long = c.post("/api/embed", json={"model": "tiny", "input": "word " * 2000, "truncate": False})
        cut = c.post("/api/embed", json={"model": "tiny", "input": "word " * 2000})
        tokens = c.post("/v1/embeddings", json={"model": "tiny", "input": [[1, 2, 3]]})
    assert long.status_code == 400 and "at most 512 tokens" in long.json()["error"]
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 512
    assert tokens.status_code == 400 and "text only" in tokens.json()["error"]["message"]
