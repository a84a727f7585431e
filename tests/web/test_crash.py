"""kill -9 in the middle of writes: the database is intact and no acknowledged write is lost."""

import random
import signal
import sqlite3
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from appliance import db as database, tokens
from served import PALADIN, Service

pytestmark = pytest.mark.service


def kill_9(process: subprocess.Popen) -> None:
    """The power-cut of a process tree: the worker and the arbiter die at once, nothing is flushed."""
    for child in psutil.Process(process.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    process.send_signal(signal.SIGKILL)
    process.wait()


def intact(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return conn


def test_conversation_writes_survive_a_kill_9(tiny_model, tmp_path):
    (tmp_path / "config.yaml").write_text("inference:\n  max_tokens: 16\n")  # short replies: many writes
    running = Service(tiny_model, tmp_path)
    acknowledged, stop = [], threading.Event()

    def write():
        with running.client() as c:
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

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(random.uniform(1.5, 3))
    kill_9(running.process)
    stop.set()
    writer.join(30)
    assert any(message for _, message in acknowledged), "no reply was stored before the kill"
    conn = intact(tmp_path / "paladin.db")
    for conversation, message in acknowledged:
        assert conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation,)).fetchone()
        if message:
            roles = [r[0] for r in conn.execute("SELECT role FROM messages WHERE conversation = ? ORDER BY id",
                                                (conversation,))]
            assert roles == ["user", "assistant"]
    conn.close()
    restarted = Service(tiny_model, tmp_path)
    try:
        with restarted.client() as c:
            assert c.get("/conversations").status_code == 200
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
    intact(tmp_path / "paladin.db").close()
    conn = database.connect(tmp_path / "paladin.db")
    assert all(tokens.verify(conn, token) for token in shown)  # a token shown to its owner works
