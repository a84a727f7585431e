"""Durable writes (the new content or the old one, never a partial file, with the mode asked for),
and reading what a less trusted process left without being led elsewhere."""

import os
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


@pytest.fixture
def planted(tmp_path):
    """A secret outside `top`, and a `top` that a less trusted process filled with ways to reach it."""
    secret = tmp_path / "secret"
    secret.write_text("root's")
    top = tmp_path / "top"
    (top / "real").mkdir(parents=True)
    (top / "real/file").write_text("mine")
    os.symlink(tmp_path, top / "linked-dir")
    os.symlink(secret, top / "linked-file")
    os.mkfifo(top / "fifo")
    return top


@pytest.mark.parametrize("relative", ["linked-dir/secret", "linked-file", "fifo", "../secret", "real/../../secret"])
def test_open_beneath_follows_no_link_and_opens_no_fifo(planted, relative):
    with pytest.raises(files.NotPlain):
        files.open_beneath(planted, relative)


def test_open_beneath_opens_a_plain_file_and_reports_a_missing_one(planted):
    with files.open_beneath(planted, "real/file") as f:
        assert f.read() == b"mine"
    with pytest.raises(FileNotFoundError):
        files.open_beneath(planted, "real/nothing")


def test_remove_beneath_removes_links_not_what_they_point_to(planted):
    with pytest.raises(files.NotPlain):
        files.remove_beneath(planted, "linked-dir/secret")  # never reached through the link
    files.remove_beneath(planted, "linked-dir")
    files.remove_beneath(planted, "linked-file")
    files.remove_beneath(planted, "real")
    assert (planted.parent / "secret").read_text() == "root's"
    assert sorted(p.name for p in planted.iterdir()) == ["fifo"]
