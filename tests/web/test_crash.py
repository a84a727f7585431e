"""kill -9 in the middle of writes: the database is intact and no acknowledged write is lost."""

import itertools
import random
import signal
import sqlite3
import subprocess
import threading
import time

import httpx
import pytest

from appliance import config, db as database, tokens
from appliance.layout import DataDir
from tests.support.served import PALADIN, UNLIMITED, Service, kill_9

pytestmark = pytest.mark.service


def intact(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return conn


def write_conversations(service: Service, acknowledged: list, stop: threading.Event) -> None:
    """Conversations with one message each, until `stop` or the service dies; what the service
    acknowledged goes into `acknowledged`: (conversation, None) once made, (conversation, "hi") once
    its reply was stored."""
    with service.client() as c:
        while not stop.is_set():
            try:
                made = c.post("/conversations", json={"title": "t"})
                if made.status_code != 201:
                    continue
                conversation = made.json()["id"]
                acknowledged.append((conversation, None))
                with c.stream("POST", f"/conversations/{conversation}/messages", json={"content": "hi"}) as r:
                    if r.status_code == 200 and any('"done": true' in line for line in r.iter_lines()):
                        acknowledged.append((conversation, "hi"))
            except httpx.HTTPError:
                return


def kept(path, acknowledged: list) -> None:
    """The database is intact and holds every acknowledged conversation and reply."""
    assert any(message for _, message in acknowledged), "no reply was stored before the kill"
    conn = intact(path)
    for conversation, message in acknowledged:
        assert conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation,)).fetchone()
        if message:
            roles = [r[0] for r in conn.execute("SELECT role FROM messages WHERE conversation = ? ORDER BY id",
                                                (conversation,))]
            assert roles == ["user", "assistant"]
    conn.close()


def test_conversation_writes_survive_a_kill_9(tiny_model, tmp_path):
    # short replies: many writes, faster than one client may send them to the box
    running = Service(tiny_model, tmp_path, config=UNLIMITED | {"inference": {"max_tokens": 16}})
    acknowledged, stop = [], threading.Event()
    writer = threading.Thread(target=write_conversations, args=(running, acknowledged, stop))
    writer.start()
    # At a random moment once replies are being stored (on a loaded machine the first takes longer than
    # any fixed wait: the check below needs one).
    deadline = time.monotonic() + 60
    while not any(message for _, message in acknowledged) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0, 1.5))
    kill_9(running.process)
    stop.set()
    writer.join(30)
    kept(DataDir(tmp_path).database, acknowledged)
    restarted = Service(tiny_model, tmp_path)
    try:
        with restarted.client() as c:
            assert c.get("/conversations").status_code == 200
    finally:
        restarted.stop()


def test_a_model_swap_survives_a_kill_9(two_models):
    """Swaps asked for in a loop while conversations are written, then kill -9 at a random moment: every
    acknowledged write is kept, and the owner's file names the last acknowledged choice or the one
    asked for when the box died (saved, but not yet answered); the restarted box serves that one."""
    running = Service(None, two_models, config=UNLIMITED | {"inference": {"model": "tiny.gguf", "max_tokens": 16}})
    acknowledged, asked, chosen, stop = [], [], ["tiny.gguf"], threading.Event()

    def swap():
        with running.client() as c:
            for name in itertools.cycle(("other.gguf", "tiny.gguf")):
                if stop.is_set():
                    return
                asked.append(name)
                try:
                    if c.put("/models/default", json={"model": name}).status_code == 200:
                        chosen.append(name)
                except httpx.HTTPError:
                    return

    workers = [threading.Thread(target=write_conversations, args=(running, acknowledged, stop)),
               threading.Thread(target=swap)]
    for worker in workers:
        worker.start()
    # Progress first (a swap takes from milliseconds to seconds here, with fsyncs on a shared disk),
    # then a random moment: inside a swap, a save of the choice or a conversation write.
    swaps = random.randint(1, 4)
    deadline = time.monotonic() + 120  # only stops a hung test
    try:
        while len(chosen) <= swaps or not any(message for _, message in acknowledged):
            assert time.monotonic() < deadline and running.process.poll() is None, running.output()
            time.sleep(0.05)
        time.sleep(random.uniform(0, 0.5))
    finally:
        kill_9(running.process)
        stop.set()
    for worker in workers:
        worker.join(30)
    kept(DataDir(two_models).database, acknowledged)
    saved = config.load(None, {"data_dir": str(two_models)}).inference.model  # the file parses and validates
    assert saved in {chosen[-1], asked[-1]}
    restarted = Service(None, two_models)
    try:
        with restarted.client() as c:
            assert c.get("/health").json()["model"] == saved.removesuffix(".gguf")
            reply = c.post("/v1/chat/completions", json={"model": "paladin", "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200 and reply.json()["model"] == saved.removesuffix(".gguf")
    finally:
        restarted.stop()


def test_token_creation_survives_a_kill_9(tmp_path):
    shown = []
    for n in range(12):
        process = subprocess.Popen([PALADIN, "token", "create", "--data-dir", tmp_path, "--name", f"t{n}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(random.uniform(0, 0.6))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        if out.strip().startswith("pal_"):
            shown.append(out.strip())
    intact(DataDir(tmp_path).database).close()
    conn = database.connect(DataDir(tmp_path).database)
    assert all(tokens.verify(conn, token) for token in shown)  # a token shown to its owner works
