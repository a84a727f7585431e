"""The chat's API in-process (real llama.cpp on generated models): replies as text and sanitized HTML,
rename, regenerate, how a reply ended, and a conversation longer than the model's context."""

import json
import time
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from appliance import config, db as database, tokens
from appliance.web import markdown
from appliance.web.app import create_app
from tests.support.hostile import HOSTILE

pytestmark = pytest.mark.unit



@pytest.fixture(scope="module")
def chat_api(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    # A context of 256 tokens: a few turns outgrow it.
    cfg = config.parse({"data_dir": str(data), "server": {"requests_per_second": 0},
                        "inference": {"threads": 1, "context_tokens": 256, "max_tokens": 24}})
    token = tokens.create(database.connect(cfg.data.database), "test")
    with TestClient(create_app(cfg, tiny_model, prove=False), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def events(chat_api, path, **body) -> list[dict]:
    with chat_api.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]


class Elements(HTMLParser):
    """Every element and attribute a browser would build from the HTML."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", HOSTILE)
def test_model_markup_never_becomes_active_html(text):
    for tag, attrs in Elements(markdown.render(text)).found:
        assert tag in markdown.TAGS
        assert set(attrs) <= markdown.ATTRIBUTES.get(tag, set()) | {"rel"}
        if "href" in attrs:
            assert urlsplit(attrs["href"]).scheme in markdown.SCHEMES


def test_markdown_and_code_are_rendered():
    html = markdown.render("# Title\n\n**bold** and `x < y`\n\n```python\nif a < b:\n    pass\n```\n\n"
                           "| a | b |\n|---|---|\n| 1 | 2 |\n\n[docs](https://example.com)")
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<code>x &lt; y</code>" in html
    assert "<pre><code>if a &lt; b:\n    pass\n</code></pre>" in html and "<td>2</td>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">docs</a>' in html


def test_a_reply_streams_as_text_and_ends_as_sanitized_html(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "First"}).json()
    stream = events(chat_api, f"/conversations/{conversation['id']}/messages", content="hello")
    assert stream[0] == {"model": "tiny", "dropped": 0}
    reply = "".join(e.get("text", "") for e in stream)
    assert stream[-1] == {"done": True, "reason": "length", "html": markdown.render(reply)}
    stored = chat_api.get(f"/conversations/{conversation['id']}").json()["messages"]
    assert [(m["role"], m["finish"]) for m in stored] == [("user", None), ("assistant", "length")]
    assert stored[1]["content"] == reply and stored[1]["html"] == markdown.render(reply)
    assert "html" not in stored[0]  # the owner's own words are shown as text


def test_rename_and_its_bad_titles(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "Old"}).json()
    path = f"/conversations/{conversation['id']}"
    assert chat_api.patch(path, json={"title": "  New name  "}).json() == {"id": conversation["id"], "title": "New name"}
    assert chat_api.get(path).json()["title"] == "New name"
    assert chat_api.patch(path, json={"title": "   "}).status_code == 400
    assert chat_api.patch(path, json={"title": 5}).status_code == 400
    assert chat_api.patch(path, json={}).status_code == 400
    assert len(chat_api.patch(path, json={"title": "x" * 1000}).json()["title"]) == 200
    assert chat_api.patch("/conversations/nope", json={"title": "x"}).status_code == 404


def test_regenerate_replaces_the_last_reply_only(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "Again"}).json()
    path = f"/conversations/{conversation['id']}"
    assert chat_api.post(path + "/regenerate").status_code == 400  # nothing to answer yet
    events(chat_api, path + "/messages", content="one")
    events(chat_api, path + "/messages", content="two")
    before = chat_api.get(path).json()["messages"]
    stream = events(chat_api, path + "/regenerate")
    after = chat_api.get(path).json()["messages"]
    assert [m["role"] for m in after] == ["user", "assistant", "user", "assistant"]
    assert after[:3] == before[:3] and after[3]["created"] > before[3]["created"]
    assert after[3]["content"] == "".join(e.get("text", "") for e in stream)


def test_a_message_too_long_for_the_box_is_refused_with_its_size(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "Long"}).json()
    refused = chat_api.post(f"/conversations/{conversation['id']}/messages", json={"content": "x" * 40_000})
    assert refused.status_code == 400 and "40000 sent" in refused.json()["error"]["message"]
    assert chat_api.get(f"/conversations/{conversation['id']}").json()["messages"] == []


def test_a_chat_longer_than_the_context_drops_its_oldest_turns_and_says_so(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "Marathon"}).json()
    path = f"/conversations/{conversation['id']}"
    dropped = []
    for turn in range(12):
        stream = events(chat_api, path + "/messages", content=f"turn {turn}: tell me more about the weather today")
        dropped.append(stream[0]["dropped"])
        assert stream[-1]["done"]
    assert dropped[0] == 0 and dropped[-1] > 0 and dropped == sorted(dropped)
    assert all(d % 2 == 0 for d in dropped)  # whole turns: the owner's message and its reply
    stored = chat_api.get(path).json()["messages"]
    assert len(stored) == 24 and stored[-1]["dropped"] == dropped[-1]


def test_the_newest_message_alone_too_long_for_the_context_is_a_clear_400(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "Huge"}).json()
    refused = chat_api.post(f"/conversations/{conversation['id']}/messages", json={"content": "word " * 600})
    assert refused.status_code == 400 and "context is 256 tokens" in refused.json()["error"]["message"]


def test_a_reply_the_client_stops_is_kept_as_stopped(chat_api):
    conversation = chat_api.post("/conversations", json={"title": "Stop"}).json()
    path = f"/conversations/{conversation['id']}"
    with chat_api.stream("POST", path + "/messages", json={"content": "hello"}) as response:
        lines = response.iter_lines()
        next(line for line in lines if '"text"' in line)
    # The service stores the reply when it notices the hang-up, a moment after the client's close.
    deadline = time.monotonic() + 10
    while len(stored := chat_api.get(path).json()["messages"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored[-1]["role"] == "assistant" and stored[-1]["finish"] in ("stopped", "length")
