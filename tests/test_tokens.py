import pytest

from appliance import db as database, tokens
from appliance.web.auth import presented_token
from starlette.datastructures import Headers
import base64

pytestmark = pytest.mark.unit


def test_tokens_are_stored_hashed_and_can_be_revoked(tmp_path):
    db = database.connect(tmp_path / "p.db")
    token = tokens.create(db, "ha")
    assert token.startswith("pal_") and len(token) > 40
    raw = tmp_path.joinpath("p.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("p.db-*"))
    assert token.encode() not in raw
    assert tokens.verify(db, token) == "ha"
    assert tokens.verify(db, token + "x") is None
    assert tokens.revoke(db, "ha") == 1
    assert tokens.verify(db, token) is None


def test_token_accepted_as_bearer_or_basic_password():
    basic = base64.b64encode(b"homeassistant:pal_secret").decode()
    assert presented_token(Headers({"authorization": "Bearer pal_secret"})) == "pal_secret"
    assert presented_token(Headers({"authorization": f"Basic {basic}"})) == "pal_secret"
    assert presented_token(Headers({"authorization": "Basic !!!"})) is None
    assert presented_token(Headers({})) is None


def test_migrations_record_the_schema_and_refuse_a_newer_database(tmp_path):
    db = database.connect(tmp_path / "p.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(database.MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA user_version = 99")
    with pytest.raises(database.DatabaseError, match="schema 99, newer than"):
        database.connect(tmp_path / "p.db")


def test_a_non_ascii_basic_credential_is_no_token():
    assert presented_token(Headers({"authorization": "Basic \xff=="})) is None
