"""Conversations the web UI keeps, in the box's database."""

from __future__ import annotations

import secrets
import sqlite3
import time


def create(db: sqlite3.Connection, title: str) -> dict:
    now = time.time()
    conversation = {"id": secrets.token_hex(8), "title": title[:200] or "New chat", "created": now, "updated": now}
    db.execute("INSERT INTO conversations (id, title, created, updated) VALUES (:id, :title, :created, :updated)",
               conversation)
    return conversation


def listing(db: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in db.execute("SELECT * FROM conversations ORDER BY updated DESC")]


def get(db: sqlite3.Connection, conversation_id: str) -> dict | None:
    row = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    if row is None:
        return None
    messages = db.execute("SELECT role, content, created FROM messages WHERE conversation = ? ORDER BY id",
                          (conversation_id,))
    return dict(row) | {"messages": [dict(m) for m in messages]}


def add_message(db: sqlite3.Connection, conversation_id: str, role: str, content: str) -> None:
    now = time.time()
    db.execute("BEGIN")
    db.execute("INSERT INTO messages (conversation, role, content, created) VALUES (?, ?, ?, ?)",
               (conversation_id, role, content, now))
    db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
    db.execute("COMMIT")


def delete(db: sqlite3.Connection, conversation_id: str) -> bool:
    return db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0
