"""A small data partition (a tmpfs of its own): a backup or a restore that cannot fit is refused before it
writes, with its own message, and the box is left as it was."""

import dataclasses
import os
import subprocess

import pytest

from appliance.backup import contents, restore, swap
from appliance.backup.archive import NotEnoughSpace

from .conftest import make_box, rows

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")]
SIZE = 96 * 2**20  # files.RESERVE_BYTES (64 MiB) stays free: about 32 MiB for the box's data


@pytest.fixture
def small(tmp_path):
    data = tmp_path / "small"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", data], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", data], check=True)


def test_a_backup_that_cannot_fit_is_refused_and_leaves_nothing(small):
    box = make_box(small)
    box.data.models.mkdir(exist_ok=True)
    (box.data.models / "big.gguf").write_bytes(os.urandom(20 * 2**20))
    with pytest.raises(NotEnoughSpace, match="no backup made: not enough space on the data partition"):
        contents.attempt(dataclasses.replace(box.cfg, backup=dataclasses.replace(box.cfg.backup, models=True)))
    left = sorted(p.name for p in box.data.backups.iterdir() if not p.name.startswith("."))
    assert contents.listing(box.data) == [] and left == ["outcome.json"]
    assert "not enough space" in contents.last(box.data)["error"]


def test_a_restore_that_cannot_fit_is_refused_and_changes_nothing(small, tmp_path):
    source = make_box(tmp_path / "big")
    source.data.models.mkdir(exist_ok=True)
    (source.data.models / "big.gguf").write_bytes(os.urandom(40 * 2**20))
    made = contents.make(source.cfg, models=True)
    target = make_box(small, name="Office")
    before = rows(target.data)
    with made.path.open("rb") as backup, pytest.raises(NotEnoughSpace, match="nothing was restored: not enough space"):
        restore.stage(target.data, backup, source.key)
    assert not target.data.restore.exists() and not swap.finish(target.data)
    assert rows(target.data) == before
