"""The request channel: the root side takes only what fits the helper's closed schema."""

import json
import os

import pytest

from appliance import channel
from appliance.channel import RequestError, UpdateRequest

pytestmark = pytest.mark.unit


def drop(data_dir, raw: bytes) -> None:
    channel.inbox(data_dir).mkdir(parents=True, exist_ok=True)
    (channel.inbox(data_dir) / "update.json").write_bytes(raw)


def test_a_submitted_request_is_taken_once(tmp_path):
    channel.submit(tmp_path, UpdateRequest(source="bundle", reboot=False))
    assert channel.pending(tmp_path, "update")
    assert channel.take(tmp_path, "update") == UpdateRequest(source="bundle", reboot=False)
    assert channel.take(tmp_path, "update") is None and not channel.pending(tmp_path, "update")


@pytest.mark.parametrize("body, problem", [
    ({"source": "http://evil.example/repo"}, "UpdateRequest.source"),
    ({"source": "/dev/sda"}, "UpdateRequest.source"),
    ({"source": "online", "reboot": "yes"}, "UpdateRequest.reboot"),
    ({"source": "online", "reboot": 1}, "UpdateRequest.reboot"),
    ({"source": "online", "command": "reboot"}, "has no field command"),
    ({"reboot": True}, "needs 'source'"),
    (["online"], "must be a JSON object"),
], ids=["url", "path", "string-bool", "int-bool", "extra-field", "missing", "not-an-object"])
def test_anything_outside_the_schema_is_refused(tmp_path, body, problem):
    drop(tmp_path, json.dumps(body).encode())
    with pytest.raises(RequestError, match=problem):
        channel.take(tmp_path, "update")
    assert not channel.pending(tmp_path, "update")  # taken, so the path unit does not fire again


def test_oversized_and_non_json_requests_are_refused(tmp_path):
    drop(tmp_path, b'{"source": "online", "x": "' + b"a" * channel.MAX_BYTES + b'"}')
    with pytest.raises(RequestError, match="at most"):
        channel.take(tmp_path, "update")
    drop(tmp_path, b"\xff\xfe not json")
    with pytest.raises(RequestError, match="not JSON"):
        channel.take(tmp_path, "update")


def test_links_are_never_followed(tmp_path):
    secret = tmp_path / "root-only"
    secret.write_text('{"source": "online"}')
    channel.inbox(tmp_path).mkdir()
    os.symlink(secret, channel.inbox(tmp_path) / "update.json")
    os.symlink(secret, channel.attachment(tmp_path, "update", "bundle"))
    with pytest.raises(RequestError, match="not a plain file"):
        channel.take(tmp_path, "update")
    with pytest.raises(RequestError, match="not a plain file"):
        channel.open_attachment(tmp_path, "update", "bundle")
    assert secret.exists()


def test_a_missing_attachment_is_a_clear_error(tmp_path):
    with pytest.raises(RequestError, match="no bundle was uploaded"):
        channel.open_attachment(tmp_path, "update", "bundle")
