"""The real Open WebUI against the real service, set up as a new owner sets it up.

    ./build.py bench openwebui [--json FILE]

Open WebUI runs from PyPI (the version pinned below, in its own venv under ~/.cache/paladin/openwebui: about
7 GB, 5 minutes to install once, since it brings torch) with its own data in a temporary directory and
OFFLINE_MODE on (it would otherwise fetch an embedding model from a hub).  It is driven through the REST
calls its own pages make: the first account (the admin), Admin -> Settings -> Connections -> Ollama API
(URL and key, verified, saved), then the model list, a chat, streamed and not, the same through an OpenAI
API connection, the model admin (running models, pulling a name the box does not have, pulling a catalog
tier, which the box downloads over real HTTP from 127.0.0.1, deleting it, deleting the served model) and
documents: the box's embeddings as Open WebUI's embedding engine, a file embedded and searched, and a chat
that cites it.  Everything seen is printed and written as JSON; the run fails on the first step that does
not go as a new owner would expect.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from buildhost import CACHE
from buildhost.qemu import free_port
from buildhost.steps import run, step
from tests.support.clients import SERVED, TIER, App, box, expect, report, results_file
from tests.support.served import Service

VERSION = "0.12.4"
ROOT = CACHE / "openwebui" / VERSION
NOTE = "The garden shed key hangs on the blue hook behind the kitchen door.\n" \
       "The wifi password is on a card in the hallway drawer.\n"


def venv() -> Path:
    """Open WebUI in a venv of its own, made once (it needs Python 3.11 or 3.12: the build host's).  A venv's
    scripts name its path, so it is made in place, and a stamp says it is complete."""
    stamp = ROOT / "installed"
    if stamp.exists():
        return ROOT
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", ROOT], log=ROOT.parent / "venv.log")
    run([ROOT / "bin/pip", "install", "-q", f"open-webui=={VERSION}"], log=ROOT.parent / "pip.log",
        hint="Open WebUI needs Python 3.11 or 3.12 (a Debian 12 host's) and about 7 GB from PyPI")
    stamp.touch()
    return ROOT


class OpenWebUI(App):
    """`open-webui serve` on 127.0.0.1 with a fresh data directory; its first account, the admin, signed in."""

    def __init__(self, root: Path, data: Path):
        port = free_port()
        env = {"PATH": os.environ["PATH"], "HOME": str(data), "DATA_DIR": str(data), "OFFLINE_MODE": "true",
               "HF_HUB_OFFLINE": "1", "WEBUI_SECRET_KEY": os.urandom(16).hex(), "ENABLE_OPENAI_API": "false"}
        super().__init__("Open WebUI", [root / "bin/open-webui", "serve", "--host", "127.0.0.1", "--port", str(port)],
                         port, data / "open-webui.log", "/health", env)
        account = self.ok(self.http.post("/api/v1/auths/signup", json={
            "name": "Owner", "email": "owner@example.com", "password": "a long passphrase"}))
        self.http.headers["Authorization"] = f"Bearer {account['token']}"

    def post(self, path: str, body: dict):
        return self.ok(self.http.post(path, json=body))

    def lines(self, method: str, path: str, body: dict) -> list[str]:
        """A streamed answer's lines (Ollama's NDJSON or OpenAI's server-sent events)."""
        with self.http.stream(method, path, json=body) as response:
            return [line for line in response.iter_lines() if line.strip()]


def connections(service: Service, owui: OpenWebUI, token: str, results: dict) -> None:
    wrong = owui.http.post("/ollama/verify", json={"url": service.url, "key": "not-a-token"})
    expect(results, "verify with a wrong key", wrong.json(), wrong.status_code >= 400 and
           "API token" in wrong.text, "an error that says an API token is needed")
    right = owui.post("/ollama/verify", {"url": service.url, "key": token})
    expect(results, "verify with the token", right, "version" in right, "the box's version")
    owui.post("/ollama/config/update", {"ENABLE_OLLAMA_API": True, "OLLAMA_BASE_URLS": [service.url],
                                        "OLLAMA_API_CONFIGS": {"0": {"enable": True, "key": token}}})
    owui.post("/openai/config/update", {"ENABLE_OPENAI_API": True, "OPENAI_API_BASE_URLS": [f"{service.url}/v1"],
                                        "OPENAI_API_KEYS": [token],
                                        "OPENAI_API_CONFIGS": {"0": {"enable": True, "prefix_id": "box"}}})
    models = sorted(m["id"] for m in owui.ok(owui.http.get("/api/models", params={"refresh": "true"}))["data"])
    expect(results, "models", models, models == sorted([f"{SERVED}:latest", "paladin:latest", f"box.{SERVED}",
                                                        "box.paladin"]),
           "the served model and paladin through each connection")


def chats(owui: OpenWebUI, results: dict) -> None:
    ask = {"messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 40}
    for model in ("paladin:latest", "box.paladin"):
        reply = owui.post("/api/chat/completions", {"model": model, "stream": False} | ask)
        words = reply["choices"][0]["message"]["content"]
        expect(results, f"chat with {model}", {"reply": words[:200], "usage": reply.get("usage", {}).get(
            "completion_tokens")}, bool(words.strip()), "a reply in words")
        events = owui.lines("POST", "/api/chat/completions", {"model": model, "stream": True} | ask)
        pieces = [json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                  for e in events if e.startswith("data: {")]
        expect(results, f"streamed chat with {model}", {"chunks": len(pieces), "text": "".join(pieces)[:200],
                                                       "last": events[-1][:40]},
               len(pieces) > 1 and events[-1] == "data: [DONE]", "chunks, then [DONE]")


def admin(service: Service, owui: OpenWebUI, results: dict) -> None:
    running = [m["name"] for m in owui.ok(owui.http.get("/ollama/api/ps"))["models"]]
    expect(results, "running models", running, running == [f"{SERVED}:latest"], "the served model")
    unknown = owui.http.post("/ollama/api/pull/0", json={"model": "llama3.2"})
    expect(results, "pull a name the box does not have", unknown.json(), unknown.status_code == 404 and
           TIER in unknown.text, "404 naming what the box can download")
    pulled = [json.loads(line) for line in owui.lines("POST", "/ollama/api/pull/0", {"model": TIER})]
    with service.client() as c:
        installed = sorted(m["name"] for m in c.get("/models").json()["models"])
    expect(results, "pull a catalog tier", {"statuses": [p.get("status") or p.get("error") for p in pulled][-3:],
                                            "installed": installed},
           pulled[-1].get("status") == "success" and f"{TIER}.gguf" in installed,
           "Ollama's progress lines ending in success, the tier installed")
    served = owui.http.request("DELETE", "/ollama/api/delete/0", json={"model": f"{SERVED}:latest"})
    expect(results, "delete the served model", served.json(), served.status_code == 409 and
           "the model the box serves" in served.text, "409 saying it is being served")
    gone = owui.ok(owui.http.request("DELETE", "/ollama/api/delete/0", json={"model": TIER}))
    with service.client() as c:
        installed = sorted(m["name"] for m in c.get("/models").json()["models"])
    expect(results, "delete the tier", {"answer": gone, "installed": installed},
           gone is True and f"{TIER}.gguf" not in installed, "true, and the file gone")


def documents(service: Service, owui: OpenWebUI, token: str, data: Path, results: dict) -> None:
    owui.post("/api/v1/retrieval/embedding/update", {
        "RAG_EMBEDDING_ENGINE": "ollama", "RAG_EMBEDDING_MODEL": "paladin:latest",
        "ollama_config": {"url": service.url, "key": token}})
    note = data / "notes.txt"
    note.write_text(NOTE)
    with note.open("rb") as f:
        file = owui.ok(owui.http.post("/api/v1/files/", params={"process": "true"}, files={"file": f}))
    deadline, status = time.monotonic() + 120, {}
    while time.monotonic() < deadline and status.get("status") not in ("completed", "failed"):
        time.sleep(1)
        status = owui.ok(owui.http.get(f"/api/v1/files/{file['id']}/process/status"))
    expect(results, "a document embedded by the box", status, status.get("status") == "completed", "completed")
    found = owui.post("/api/v1/retrieval/query/doc", {"collection_name": f"file-{file['id']}",
                                                      "query": "where is the shed key", "k": 1})
    expect(results, "the document searched", found["documents"][0][0][:80], "blue hook" in found["documents"][0][0],
           "the note found by its meaning")
    reply = owui.post("/api/chat/completions", {
        "model": "paladin:latest", "stream": False, "max_tokens": 60, "files": [{"type": "file", "id": file["id"]}],
        "messages": [{"role": "user", "content": "Where is the garden shed key?"}]})
    sources = [s["source"].get("id") for s in reply.get("sources", [])]
    expect(results, "a chat citing it", {"sources": sources, "reply": reply["choices"][0]["message"]["content"][:200]},
           sources == [file["id"]], "the note as the reply's source")


def main() -> None:
    out = results_file(__doc__)
    with step(f"Open WebUI {VERSION} in its venv"):
        root = venv()
    results: dict = {"open_webui": VERSION}
    with box("open-webui") as (service, token), tempfile.TemporaryDirectory() as tmp:
        with step("Open WebUI up, its admin signed up"):
            owui = OpenWebUI(root, Path(tmp))
        with owui, step("the owner's steps"):
            connections(service, owui, token, results)
            chats(owui, results)
            admin(service, owui, results)
            documents(service, owui, token, Path(tmp), results)
    report(results, out)


if __name__ == "__main__":
    main()
