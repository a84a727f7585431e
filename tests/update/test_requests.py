"""paladin-update.service's side of the request channel: what it refuses before touching anything."""

import json

import pytest

from appliance import channel, config
from appliance.layout import UpdateState
from appliance.update import install
from appliance.update.progress import UpdateError

pytestmark = pytest.mark.unit


def box(tmp_path, **update):
    return config.parse({"data_dir": str(tmp_path / "data"), "update": update})


def status(state: UpdateState):
    return json.loads(state.status.read_text())


@pytest.mark.parametrize("request_, settings, message", [
    (channel.UpdateRequest(source="online"), {}, "no update repository is configured"),
    (channel.UpdateRequest(source="bundle"), {"url": "http://10.0.0.2/repo"}, "no bundle was uploaded"),
    ({"source": "file:///etc/shadow"}, {}, "refused the web UI's request: UpdateRequest.source"),
], ids=["online-without-url", "bundle-without-upload", "free-form-source"])
def test_refused_requests_are_reported_where_the_web_ui_looks(tmp_path, request_, settings, message):
    cfg, state = box(tmp_path, **settings), UpdateState(tmp_path / "state")
    if isinstance(request_, dict):
        channel.inbox(cfg.data_path).mkdir(parents=True)
        (channel.inbox(cfg.data_path) / "update.json").write_text(json.dumps(request_))
    else:
        channel.submit(cfg.data_path, request_)
    with pytest.raises(UpdateError, match=message):
        install.run_service(cfg, state)
    assert status(state)["phase"] == "failed" and message in status(state)["error"]
    assert not channel.pending(cfg.data_path, "update")


def test_the_timer_does_nothing_unless_automatic_updates_are_on(tmp_path, capsys):
    install.run_service(box(tmp_path, url="http://10.0.0.2/repo"), UpdateState(tmp_path / "state"))
    assert "automatic updates are off" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()
