"""`paladin backup` as the daily timer and the console run it: the daily one only when the owner turned it
on, `now` refused with its reason before the kit is confirmed, `list` with the key each backup needs, and a
restore from the console, checked first, with the key or with the sealed key and its passphrase."""

import subprocess

import pytest

from appliance.backup import contents, keys, swap
from tests.support.served import PALADIN

from .conftest import PASSPHRASE, fresh_box, rows

pytestmark = pytest.mark.system


def paladin(box, *verb: str) -> subprocess.CompletedProcess:
    return subprocess.run([PALADIN, "backup", *verb, "--data-dir", box.data.root], capture_output=True, text=True)


def test_the_daily_backup_waits_for_the_owner_and_now_waits_for_the_kit(box, tmp_path):
    off = paladin(box, "scheduled")
    assert off.returncode == 0 and "scheduled backups are off" in off.stdout and not contents.listing(box.data)
    (box.data.owner_config).write_text("backup:\n  schedule: true\n")
    on = paladin(box, "scheduled")
    assert on.returncode == 0, on.stderr
    made = contents.listing(box.data)
    assert [str(m.path) for m in made] == [on.stdout.strip()]
    listed = paladin(box, "list")
    assert listed.stdout.split("\t")[2].strip() == keys.fingerprint_of(box.key)
    new = fresh_box(tmp_path / "new")
    refused = paladin(new, "now")
    assert refused.returncode == 1 and "until the recovery kit is confirmed" in refused.stderr


def test_a_console_restore_checks_first_and_restores_only_with_yes(box, tmp_path):
    made = contents.make(box.cfg)
    new = fresh_box(tmp_path / "new")

    def restore(*options: str, key: str = box.key) -> subprocess.CompletedProcess:
        return subprocess.run([PALADIN, "backup", "restore", made.path, *options, "--data-dir", new.data.root],
                              input=key + "\n", capture_output=True, text=True)

    wrong = restore(key=keys.generate())
    assert wrong.returncode == 1 and f"made for the recovery key {made.key}" in wrong.stderr
    checked = restore()
    assert checked.returncode == 0 and '"owner": "Ada"' in checked.stdout and "run again with --yes" in checked.stdout
    assert not new.data.restore.exists()
    sealed = tmp_path / f"recovery-key-{made.key}.age"
    sealed.write_text(keys.seal(box.key, PASSPHRASE))
    wrong = restore("--sealed-key", sealed, key=PASSPHRASE[1:])
    assert wrong.returncode == 1 and "that passphrase does not open" in wrong.stderr
    assert restore("--sealed-key", sealed, key=PASSPHRASE).returncode == 0 and not new.data.restore.exists()
    assert restore("--yes").returncode == 0 and swap.committed(new.data)
    assert swap.finish(new.data) and rows(new.data) == rows(box.data)
