"""Making a backup and restoring it: what it holds, verified before it counts, checked whole before anything
changes, put in place all at once; every refusal leaves the box exactly as it was."""

import contextlib
import fcntl
import io
import json
import os
import shutil
import sqlite3

import pytest

from appliance import db as database, device, files, tokens
from appliance.backup import archive, contents, keys, restore, swap
from appliance.backup.archive import BackupError

from .conftest import fresh_box, make_box, rows

pytestmark = pytest.mark.system  # Debian's age does the encryption


def snapshot(root) -> dict:
    """Every file under `root` and its bytes: 'untouched' means this is equal before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def restored(backup, target, key, **kwargs):
    with backup.path.open("rb") as source:
        preview = restore.stage(target.data, source, key, **kwargs)
    swap.commit(target.data)
    assert swap.finish(target.data)
    return preview


def test_a_backup_holds_the_database_settings_and_keys_and_is_named_for_its_key(box):
    made = contents.make(box.cfg)
    assert made.name.startswith("paladin-kitchen-") and made.name.endswith(f"-{keys.fingerprint_of(box.key)}.age")
    assert contents.needs_key(made.name) == made.key == keys.fingerprint_of(box.key)
    assert [m.name for m in contents.listing(box.data)] == [made.name]
    manifest = archive.read(made.path.open("rb"), box.key)
    assert set(manifest["files"]) == {"paladin.db", "config.yaml", "firewall.json", *contents.IDENTITY}
    assert manifest["box"] == "Kitchen" and manifest["schema"] == len(database.MIGRATIONS) and manifest["identity"]
    assert not list(box.data.backups.glob("*.partial")) and not (box.data.backups / ".work").exists()


def test_the_box_keys_and_models_are_in_a_backup_only_when_asked(box, tiny_model):
    box.data.models.mkdir(exist_ok=True)
    shutil.copy(tiny_model, box.data.models / "tiny.gguf")
    bare = archive.read(contents.make(box.cfg, identity=False, now=1e9).path.open("rb"), box.key)
    assert not set(contents.IDENTITY) & set(bare["files"]) and not bare["identity"]
    full = archive.read(contents.make(box.cfg, models=True, now=2e9).path.open("rb"), box.key)
    assert full["files"]["models/tiny.gguf"]["size"] == tiny_model.stat().st_size


def test_no_backup_before_the_recovery_key_is_confirmed(tmp_path):
    box = fresh_box(tmp_path / "new")
    with pytest.raises(BackupError, match="until the recovery kit is confirmed"):
        contents.make(box.cfg)


def test_the_kit_is_confirmed_only_with_the_right_group_and_then_never_shown(tmp_path):
    ring = keys.Keys(fresh_box(tmp_path / "new").data.device)
    proposed = ring.proposed()
    assert ring.proposed() == proposed  # the same kit until it is confirmed
    with pytest.raises(keys.BadKey, match="not group 2 of the key"):
        ring.confirm(1, "AAAAAA")
    assert ring.current() is None
    ring.confirm(1, " " + keys.groups(proposed)[1].lower() + " ")
    assert ring.current() == proposed and not ring.device.recovery_key_proposed.exists()


def test_a_restore_brings_back_everything_and_the_tokens_still_work(box, tmp_path):
    made = contents.make(box.cfg)
    before, fingerprint = rows(box.data), device.secrets_of(box.data.root).fingerprint()
    target = fresh_box(tmp_path / "flashed")
    preview = restored(made, target, box.key, needs=made.key)
    assert (preview["conversations"], preview["messages"], preview["tokens"], preview["owner"]) == (2, 2, 1, "Ada")
    assert rows(target.data) == before
    assert device.secrets_of(target.data.root).fingerprint() == fingerprint
    assert target.data.owner_config.read_bytes() == box.data.owner_config.read_bytes()
    assert keys.Keys(target.data.device).current() == box.key
    db = database.connect(target.data.database)
    assert tokens.verify(db, box.token) == "home-assistant"
    db.close()
    assert not target.data.restore.exists()
    firewall = json.loads((target.data.requests / "firewall.json").read_text())
    assert firewall == {"lan": box.cfg.firewall.lan, "privacy": False, "ssh": False, "ssh_key": ""}


def test_a_backup_without_the_box_keys_keeps_the_new_box_certificate(box, tmp_path):
    made = contents.make(box.cfg, identity=False)
    target = fresh_box(tmp_path / "flashed")
    own = device.secrets_of(target.data.root).fingerprint()
    restored(made, target, box.key)
    assert device.secrets_of(target.data.root).fingerprint() == own
    assert rows(target.data) == rows(box.data)


@pytest.mark.parametrize("case", ["wrong key", "flipped", "cut", "not age", "newer schema", "strange member"])
def test_a_refused_restore_leaves_the_box_exactly_as_it_was(box, tmp_path, case):
    made = contents.make(box.cfg)
    data = made.path.read_bytes()
    key = box.key
    if case == "wrong key":
        key = keys.generate()
    elif case == "flipped":
        data = data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]
    elif case == "cut":
        data = data[:-17]
    elif case == "not age":
        data = b"SQLite format 3\x00" + data
    else:
        (tmp_path / "f").write_bytes(b"x")
        if case == "newer schema":
            head, name = {"schema": len(database.MIGRATIONS) + 1}, "paladin.db"
        else:
            head, name = {"schema": 1}, "device/../../etc/shadow"
        with (tmp_path / "crafted.age").open("wb") as out:
            archive.write(out, head, [(archive.measure(name, tmp_path / "f"), tmp_path / "f")], keys.recipient(box.key))
        data = (tmp_path / "crafted.age").read_bytes()
    target = make_box(tmp_path / "other", name="Office")
    before = snapshot(target.data.root)
    with pytest.raises(BackupError) as refused:
        restore.stage(target.data, io.BytesIO(data), key, needs=made.key)
    assert {"wrong key": f"made for the recovery key {made.key}", "flipped": "damaged", "cut": "cut short",
            "not age": "not an age-encrypted file", "newer schema": "newer PAL-adin OS (its database has schema",
            "strange member": "which no PAL-adin backup holds"}[case] in str(refused.value)
    assert not swap.finish(target.data)  # the next start finds nothing to put in place
    assert snapshot(target.data.root) == before


def test_an_older_schema_is_brought_forward_when_restored(box, tmp_path, monkeypatch):
    old = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(old, isolation_level=None)) as db:
        monkeypatch.setattr(database, "MIGRATIONS", database.MIGRATIONS[:2])
        database.migrate(db)
        db.execute("INSERT INTO conversations VALUES ('c1', 'Old times', 1, 1)")
    monkeypatch.undo()
    shutil.copy(old, box.data.database)
    for suffix in ("-wal", "-shm"):
        box.data.database.with_name(box.data.database.name + suffix).unlink(missing_ok=True)
    monkeypatch.setattr(database, "MIGRATIONS", database.MIGRATIONS[:2])
    made = contents.make(box.cfg)
    monkeypatch.undo()
    target = fresh_box(tmp_path / "flashed")
    restored(made, target, box.key)
    db = database.connect(target.data.database)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(database.MIGRATIONS)
    assert [r["title"] for r in db.execute("SELECT title FROM conversations")] == ["Old times"]
    db.close()


class Cut(BaseException):
    """The power goes: nothing after this runs (a BaseException, so no handler of the code under test eats it)."""


def cutting(monkeypatch, at: int) -> list:
    """Cut the power at the `at`-th durable step (a file committed, removed or replaced) from now on."""
    steps = []

    def step(real):
        def wrapped(*args, **kwargs):
            steps.append(real.__name__)
            if len(steps) == at:
                raise Cut()
            return real(*args, **kwargs)
        return wrapped

    for module, name in ((files, "commit"), (files, "write"), (os, "replace"), (os, "unlink"), (shutil, "rmtree")):
        monkeypatch.setattr(module, name, step(getattr(module, name)))
    return steps


def test_a_power_cut_at_every_step_of_a_restore_ends_all_old_or_all_new(box, tmp_path, monkeypatch):
    made = contents.make(box.cfg)
    wanted, at = rows(box.data), 0
    while True:
        at += 1
        target = make_box(tmp_path / f"cut-{at}", name="Office")
        old = rows(target.data)
        steps, confirmed = cutting(monkeypatch, at), []
        try:
            with made.path.open("rb") as source:
                restore.stage(target.data, source, box.key)
            swap.commit(target.data)
            confirmed.append(True)
            swap.finish(target.data)
            break  # no step left to cut at
        except Cut:
            pass
        finally:
            monkeypatch.undo()
        committed = bool(confirmed) or swap.committed(target.data)
        swap.finish(target.data)  # the next start
        assert rows(target.data) == (wanted if committed else old), (at, steps[-1])
        db = database.connect(target.data.database)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        assert not target.data.restore.exists()
    assert at > 10


def test_a_power_cut_at_every_step_of_a_backup_leaves_no_backup_or_a_verified_one(box, monkeypatch):
    at = 0
    while True:
        at += 1
        steps = cutting(monkeypatch, at)
        try:
            contents.make(box.cfg, now=1e9 + at)
            monkeypatch.undo()
            break
        except Cut:
            pass
        finally:
            monkeypatch.undo()
        for made in contents.listing(box.data):  # whatever carries a backup's name reads back whole
            archive.read(made.path.open("rb"), box.key)
        assert steps
    contents.make(box.cfg, now=2e9)  # and the next backup is not hindered by what the cuts left
    assert at > 3


def test_one_backup_at_a_time_whoever_asks(box):
    box.data.backups.mkdir(exist_ok=True)
    with box.data.backup_lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the daily backup, say, in its own process
        with pytest.raises(BackupError, match="a backup is being made already"):
            contents.make(box.cfg)
    assert contents.make(box.cfg).path.exists()


def test_old_backups_go_beyond_the_count_and_the_age(box):
    day = 86400
    for n in range(6):
        contents.make(box.cfg, now=1e9 + n * 10 * day)
    doomed = [m.name for m in contents.listing(box.data)[3:]]
    assert contents.prune(box.data, keep=2, days=25, now=1e9 + 50 * day) == doomed
    left = [m.created for m in contents.listing(box.data)]
    assert left == [1e9 + n * 10 * day for n in (5, 4, 3)]


def test_a_failed_backup_is_recorded_and_never_counted(box, monkeypatch):
    made = contents.attempt(box.cfg, now=1e9)
    monkeypatch.setattr(archive, "read", lambda *a, **k: (_ for _ in ()).throw(BackupError("a bad card")))
    with pytest.raises(BackupError, match=r"did not read back as written \(a bad card\); nothing was kept"):
        contents.attempt(box.cfg, now=2e9)
    assert [m.name for m in contents.listing(box.data)] == [made.name]
    last = contents.last(box.data)
    assert last["good"] == 1e9 and "a bad card" in last["error"]
