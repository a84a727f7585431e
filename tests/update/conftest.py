"""A release repository signed with keys made for the test, served over real HTTP, and a box's
update state directory that trusts it."""

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance.layout import UpdateState
from appliance.update import trust
from buildhost import release
from tests.support.fakes import fake_image


@pytest.fixture
def keys(tmp_path):
    release.keys_init(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def repo(tmp_path, keys):
    path = tmp_path / "repo"
    images = tmp_path / "images"
    images.mkdir()
    repository = release.Repository(path, keys)
    repository.release(fake_image(images, "2"))
    return repository


@pytest.fixture
def served(repo):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(repo.path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def update_state(tmp_path, keys, monkeypatch):
    """A box's update state directory trusting `keys`' root, as the image bakes it in."""
    monkeypatch.setattr(trust, "TRUSTED_ROOT", keys / "root.json")
    state = UpdateState(tmp_path / "state")
    state.root.mkdir()
    return state
