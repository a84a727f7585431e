"""Conversations the web UI keeps, in the box's database."""

from __future__ import annotations

import secrets
import sqlite3
import time

from .db import transaction

MAX_TITLE = 200


def create(db: sqlite3.Connection, title: str) -> dict:
    now = time.time()
    conversation = {"id": secrets.token_hex(8), "title": title[:MAX_TITLE] or "New chat", "created": now,
                    "updated": now}
    with transaction(db):
        db.execute("INSERT INTO conversations (id, title, created, updated) VALUES (:id, :title, :created, :updated)",
                   conversation)
    return conversation


def listing(db: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in db.execute("SELECT * FROM conversations ORDER BY updated DESC")]


def get(db: sqlite3.Connection, conversation_id: str) -> dict | None:
    row = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    if row is None:
        return None
    messages = db.execute("SELECT id, role, content, created, finish, dropped FROM messages WHERE conversation = ? "
                          "ORDER BY id", (conversation_id,))
    return dict(row) | {"messages": [dict(m) for m in messages]}


def rename(db: sqlite3.Connection, conversation_id: str, title: str) -> bool:
    with transaction(db):
        return db.execute("UPDATE conversations SET title = ? WHERE id = ?",
                          (title[:MAX_TITLE], conversation_id)).rowcount > 0


def add_message(db: sqlite3.Connection, conversation_id: str, role: str, content: str, *,
                finish: str | None = None, dropped: int = 0, replacing: int | None = None) -> bool:
    """Store a message (in place of message `replacing`, a regenerated reply, in the same transaction);
    False, and nothing written, when the conversation was deleted meanwhile."""
    now = time.time()
    try:
        with transaction(db):
            if replacing is not None:
                db.execute("DELETE FROM messages WHERE id = ? AND conversation = ?", (replacing, conversation_id))
            db.execute("INSERT INTO messages (conversation, role, content, created, finish, dropped) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (conversation_id, role, content, now, finish, dropped))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
    except sqlite3.IntegrityError:  # the conversation is gone (FOREIGN KEY constraint failed)
        return False
    return True


def delete(db: sqlite3.Connection, conversation_id: str) -> bool:
    with transaction(db):
        return db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0
