"""Durable writes: the new content or the old one, never a partial file, with the mode asked for."""

import stat

import pytest

from appliance import files

pytestmark = pytest.mark.unit


def test_write_replaces_whole_files_with_their_mode(tmp_path):
    path = tmp_path / "state" / "status.json"
    files.write(path, b"old", mode=0o600)
    files.write(path, b"new", mode=0o644)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "status.json"
    files.write(path, b"old")
    with pytest.raises(TypeError):
        files.write(path, "not bytes")  # fails after the partial file was created
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_a_stale_partial_from_a_crash_is_replaced(tmp_path):
    path = tmp_path / "status.json"
    files.partial(path).write_bytes(b"torn")
    files.write(path, b"whole")
    assert path.read_bytes() == b"whole" and not files.partial(path).exists()
