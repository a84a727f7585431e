"""The state directories as release 2026.12.04 left them still load: every file is spelled here as it lies on
disk, on purpose (the names are an on-disk format, appliance/layout.py the one place the code spells them),
and read back through the code that reads it on the box."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import channel, config, db as database, device, owner, store
from appliance.firewall import state as firewall_state
from appliance.inference.probe import Proofs, fingerprint
from appliance.layout import FirewallState, GovernorState, UpdateState
from appliance.update import status as update_status
from appliance.update.assess import failed_versions

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs9Bq0t0z9yJ8y3xYv1n2oE9k4gq5o2q0v9u3c5Wm7a root@paladin"


def lay(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.unit
def test_an_old_data_directory_loads(tmp_path):
    data = tmp_path / "paladin"
    lay(data, {
        "config.yaml": "device: {name: Kitchen box}\ninference: {model: tiny.gguf}\n",
        "models/tiny.gguf": b"GGUF old",
        "device/session.key": b"k" * 32,
        "device/setup-code": "ACDE-FGHJ-KMNP\n",
        "proofs.json": json.dumps({"fingerprint": fingerprint(), "variant": "haswell", "why": "old", "models": {}}),
        "requests/update.json": json.dumps({"source": "online", "reboot": False}),
        "update/status.json": json.dumps({"phase": "download", "done": 5, "total": 10, "time": 2}),
    })
    with database.connect(data / "paladin.db") as conn:
        owner.set_account(conn, "ada", "a long passphrase of the owner")

    cfg = config.load(None, {"data_dir": str(data)}, tmp_path / "no-firewall.yaml")
    assert (cfg.device.name, cfg.inference.model) == ("Kitchen box", "tiny.gguf")
    assert store.installed(cfg.data.models) == {"tiny.gguf": 8}
    assert store.configured_model(cfg) == data / "models/tiny.gguf"
    secrets = device.secrets_of(cfg.data_path)
    assert (secrets.session_key(), secrets.setup_code()) == (b"k" * 32, "ACDE-FGHJ-KMNP")
    assert Proofs(cfg.data.proofs).current()["variant"] == "haswell"
    assert channel.take(cfg.data_path, "update") == channel.UpdateRequest(source="online", reboot=False)
    assert owner.check_login(database.connect(cfg.data.database), "ada", "a long passphrase of the owner")

    updates = tmp_path / "paladin-update"
    lay(updates, {"status.json": json.dumps({"phase": "fetch", "time": 1}),
                  "snapshot.json": json.dumps({"running": "1.0"}),
                  "attempts.json": json.dumps([{"version": "2.0", "result": "failed", "reason": "no answer"}])})
    state = UpdateState(updates)
    assert update_status.progress(state, cfg.data_path) | {"time": 0} == {"phase": "download", "done": 5,
                                                                          "total": 10, "time": 0}
    assert update_status.snapshot(state) == {"running": "1.0"}
    assert failed_versions(state) == {"2.0"}


@pytest.mark.unit
def test_old_firewall_and_governor_state_loads(tmp_path):
    firewall = tmp_path / "paladin-firewall"
    lay(firewall, {"settings.yaml": "lan: 10.0.0.0/8\nprivacy: true\n",
                   "outcome.json": json.dumps({"ok": True, "message": "loaded"}),
                   "ssh/ssh_host_ed25519_key.pub": HOST_KEY + "\n"})
    kept = FirewallState(firewall)
    settings = firewall_state.settings(kept)
    assert (settings["lan"], settings["privacy"], settings["ssh"]) == ("10.0.0.0/8", True, False)
    assert firewall_state.outcome(kept) == {"ok": True, "message": "loaded"}
    assert firewall_state.host_key_fingerprint(kept).startswith("SHA256:")
    assert kept.authorized_keys == firewall / "ssh/authorized_keys"
    assert GovernorState(tmp_path).history == tmp_path / "history.sqlite"
