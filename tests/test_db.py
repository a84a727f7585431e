"""Schema migrations across updates and rollbacks: snapshot before migrating, restore after a rollback."""

import pytest

from appliance import conversations, db as database

pytestmark = pytest.mark.unit
NEXT = "ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0"


@pytest.fixture
def old_database(tmp_path):
    path = tmp_path / "paladin.db"
    conn = database.connect(path)
    conversation = conversations.create(conn, "written by the old version")["id"]
    conversations.add_message(conn, conversation, "user", "remember the number 42")
    conn.close()
    return path, conversation


def test_a_new_version_snapshots_before_migrating(old_database, monkeypatch):
    path, conversation = old_database
    schema = len(database.MIGRATIONS)
    monkeypatch.setattr(database, "MIGRATIONS", database.MIGRATIONS + [NEXT])
    database.connect(path).close()
    snapshot = database.snapshot_path(path, schema)
    assert snapshot.exists()
    copy = database._open(snapshot)
    assert copy.execute("PRAGMA user_version").fetchone()[0] == schema
    assert conversations.get(copy, conversation)["messages"][0]["content"] == "remember the number 42"


def test_after_a_rollback_the_old_version_reads_its_snapshot(old_database, monkeypatch):
    path, conversation = old_database
    old_migrations = list(database.MIGRATIONS)
    monkeypatch.setattr(database, "MIGRATIONS", old_migrations + [NEXT])
    newer = database.connect(path)
    conversations.create(newer, "written by the new version")
    newer.close()
    monkeypatch.setattr(database, "MIGRATIONS", old_migrations)  # the box is back on the old version
    conn = database.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(old_migrations)
    assert conversations.get(conn, conversation)["messages"][0]["content"] == "remember the number 42"
    aside = path.with_name(f"{path.name}.schema-{len(old_migrations) + 1}.rolled-back")
    kept = database._open(aside)
    assert [c["title"] for c in conversations.listing(kept)].count("written by the new version") == 1


def test_a_newer_database_without_a_snapshot_is_a_clear_error(tmp_path):
    path = tmp_path / "paladin.db"
    conn = database._open(path)
    conn.execute(f"PRAGMA user_version = {len(database.MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(database.DatabaseError, match="no snapshot"):
        database.connect(path)


def test_a_failed_write_rolls_back_and_the_connection_stays_usable(tmp_path):
    """A reply stored after its conversation was deleted: refused, and later writes still work."""
    conn = database.connect(tmp_path / "paladin.db")
    gone = conversations.create(conn, "deleted while its reply streams")["id"]
    conversations.delete(conn, gone)
    assert conversations.add_message(conn, gone, "assistant", "too late") is False
    assert not conn.in_transaction
    kept = conversations.create(conn, "next")["id"]
    assert conversations.add_message(conn, kept, "user", "still works")
    assert conversations.get(conn, kept)["messages"][0]["content"] == "still works"


def test_commits_are_durable_when_they_return(tmp_path):
    conn = database.connect(tmp_path / "paladin.db")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
