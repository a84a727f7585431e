"""The two halves of an update: the unprivileged fetcher, and root, which trusts nothing the fetcher
left.  The fetcher runs as the assistant's user; compromised, it can refuse an update, never bring one in."""

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from appliance import channel, files
from appliance.layout import DataDir, UpdateState
from appliance.update import install
from appliance.update.fetcher import Job, run_fetcher
from appliance.update.progress import Progress, UpdateError
from appliance.update.release import Box
from appliance.update.status import progress as shown
from appliance.update.trust import publish
from appliance.update.verify import verified_release

pytestmark = pytest.mark.unit
BOX = Box("x86-64", "1", {"root": 1 << 20, "verity": 1 << 20})


def fetched_by_the_job(source: str, state: UpdateState, data_dir: Path) -> Path:
    """The root side leaves the job, the fetcher runs it: what paladin-update-fetch.service does."""
    publish(state)
    Job(source, str(data_dir), BOX).save(state)
    assert run_fetcher(state) == "2"
    return DataDir(data_dir).update.mirror


def test_the_fetcher_leaves_a_mirror_that_root_checks_again(served, update_state, tmp_path):
    mirror = fetched_by_the_job(served, update_state, tmp_path / "data")
    version, chosen = verified_release(mirror, update_state, Progress(update_state.status), BOX, offline=False)
    assert version == "2"
    for info in chosen.values():
        staged = (update_state.staging / Path(info.path).name).read_bytes()
        assert hashlib.sha256(staged).hexdigest() == info.hashes["sha256"]


def test_a_bundle_job_takes_the_upload_from_the_request_channel(repo, update_state, tmp_path):
    data_dir = tmp_path / "data"
    channel.inbox(data_dir).mkdir(parents=True)
    bundle = repo.path / "bundles" / "paladin_2_x86-64.bundle"
    channel.attachment(data_dir, "update", "bundle").write_bytes(bundle.read_bytes())
    mirror = fetched_by_the_job("bundle", update_state, data_dir)
    assert verified_release(mirror, update_state, Progress(update_state.status), BOX, offline=True)[0] == "2"
    assert not DataDir(data_dir).update.bundle.exists()  # unpacked only for as long as it was needed


def test_the_web_ui_sees_the_fetchers_phase_while_root_waits(tmp_path):
    state, data_dir = UpdateState(tmp_path / "state"), tmp_path / "data"
    Progress(state.status, phase="fetch")
    assert shown(state, data_dir)["phase"] == "fetch"
    time.sleep(0.01)
    fetcher = Progress(DataDir(data_dir).update.status, phase="download", done=5, total=10)
    assert shown(state, data_dir) | {"time": 0} == shown(state) | {"phase": "download", "done": 5, "total": 10,
                                                                   "time": 0}
    fetcher.set(phase="failed", error="refused")
    assert shown(state, data_dir)["phase"] == "fetch"  # how the attempt ends is root's to say


def plant_link(mirror: Path, update_state: UpdateState) -> str:
    secret = update_state.root / "secret.json"
    secret.write_text('{"signed": "TOPSECRET"}')
    (mirror / "metadata/timestamp.json").unlink()
    os.symlink(secret, mirror / "metadata/timestamp.json")
    return "not a plain file"


def plant_fifo(mirror: Path, update_state: UpdateState) -> str:
    target = next((mirror / "targets").rglob("*.efi"))
    target.unlink()
    os.mkfifo(target)
    return "not a plain file"


def flip_a_target_byte(mirror: Path, update_state: UpdateState) -> str:
    target = next((mirror / "targets").rglob("*.efi"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    return "hash"


def forge_the_targets(mirror: Path, update_state: UpdateState) -> str:
    for path in (mirror / "metadata").glob("*.targets.json"):
        metadata = json.loads(path.read_text())
        for info in metadata["signed"]["targets"].values():
            info["hashes"]["sha256"] = "0" * 64
        path.write_text(json.dumps(metadata))
    return "the update repository was refused"


@pytest.mark.parametrize("tamper", [plant_link, plant_fifo, flip_a_target_byte, forge_the_targets],
                         ids=lambda f: f.__name__)
def test_root_refuses_a_mirror_the_fetcher_tampered_with(served, update_state, tmp_path, tamper):
    mirror = fetched_by_the_job(served, update_state, tmp_path / "data")
    trusted = {p.name: p.read_bytes() for p in update_state.metadata.glob("*.json")}
    problem = tamper(mirror, update_state)
    with pytest.raises(UpdateError) as refused:
        verified_release(mirror, update_state, Progress(update_state.status), BOX, offline=False)
    assert problem in str(refused.value) and "TOPSECRET" not in str(refused.value), str(refused.value)
    assert not update_state.staging.exists()
    if tamper is plant_link:  # refused before any new metadata was trusted
        assert {p.name: p.read_bytes() for p in update_state.metadata.glob("*.json")} == trusted


def test_the_fetchers_error_reaches_the_web_ui_bounded_and_printable(tmp_path):
    work = DataDir(tmp_path).update
    Progress(work.status, phase="failed", error="\x1b[31mred\n" * 1000)
    error = install._fetcher_error(tmp_path)
    assert len(error) <= 1000 and error.startswith("[31mred[31mred") and error.isprintable()
    work.status.unlink()
    os.symlink("/etc/shadow", work.status)
    assert "see journalctl -u paladin-update-fetch.service" in install._fetcher_error(tmp_path)
    files.remove_beneath(tmp_path, "update/status.json")
    assert not work.status.is_symlink()


def test_the_trusted_copy_is_readable_by_the_fetcher_whatever_the_updaters_umask(update_state):
    old = os.umask(0o077)  # paladin-update.service's
    try:
        published = publish(update_state)
    finally:
        os.umask(old)
    assert published.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in published.iterdir()} == {"root.json": 0o644}
