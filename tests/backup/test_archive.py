"""The backup file's format: age v1 over zstd over tar, read back only as written, every refusal in its own
words; and Debian's `age` reading it by hand, without this software."""

import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest
import zstandard

from appliance import command
from appliance.backup import archive
from appliance.backup.archive import BackupError
from appliance.backup import keys

from .conftest import PASSPHRASE

pytestmark = pytest.mark.system  # Debian's age does the encryption


class Kept(archive.Sink):
    """What a reader handed over, member by member."""

    def __init__(self):
        self.manifest, self.files = None, {}

    def accept(self, manifest):
        self.manifest = manifest

    def open(self, member):
        kept = self.files[member.name] = io.BytesIO()
        kept.close = lambda: None
        return kept


@pytest.fixture(scope="module")
def key():
    return keys.generate()


@pytest.fixture(scope="module")
def made(tmp_path_factory, key):
    """A backup of three files, the biggest random (so it spans several 64 KiB chunks after zstd)."""
    top = tmp_path_factory.mktemp("made")
    contents = {"paladin.db": os.urandom(300_000), "config.yaml": b"device:\n  name: Kitchen\n", "empty": b""}
    members = []
    for name, data in contents.items():
        (top / name).write_bytes(data)
        members.append((archive.measure(name, top / name), top / name))
    return contents, written(top / "made.age", {"box": "Kitchen"}, members, key)


def written(path, head, members, key) -> bytes:
    with path.open("wb") as out:
        archive.write(out, head, members, keys.recipient(key))
    return path.read_bytes()


def read(data: bytes, key, **kwargs) -> Kept:
    kept = Kept()
    archive.read(io.BytesIO(data), key, kept, **kwargs)
    return kept


def header_end(data: bytes) -> int:
    """Where the payload's nonce starts: after the header's MAC line."""
    return data.index(b"\n", data.index(b"\n--- ") + 1) + 1


def test_what_is_written_reads_back_with_its_manifest(made, key):
    contents, data = made
    kept = read(data, key)
    assert {name: f.getvalue() for name, f in kept.files.items()} == contents
    assert kept.manifest["box"] == "Kitchen" and kept.manifest["format"] == archive.FORMAT
    assert kept.manifest["files"]["config.yaml"]["size"] == len(contents["config.yaml"])


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 200_000])
def test_the_payload_always_ends_one_byte_past_a_chunk(tmp_path, key, size):
    (tmp_path / "f").write_bytes(os.urandom(size))
    data = written(tmp_path / "b.age", {}, [(archive.measure("f", tmp_path / "f"), tmp_path / "f")], key)
    payload = len(data) - header_end(data) - 16
    assert payload % archive.SEALED == archive.LAST + 16


def test_the_wrong_key_names_the_key_the_backup_needs(made):
    other = keys.generate()
    named = f"made for the recovery key K7QM-3XPA; the key given is {keys.fingerprint_of(other)}"
    with pytest.raises(BackupError, match=named):
        read(made[1], other, needs="K7QM-3XPA")
    with pytest.raises(BackupError, match="made for another recovery key"):
        read(made[1], other)


def test_a_changed_byte_anywhere_in_the_payload_is_damage(made, key):
    data = made[1]
    start = header_end(data)
    for at in [start, start + 16, start + 70_000, start + 2 * archive.SEALED + 5, len(data) - 1]:
        flipped = bytearray(data)
        flipped[at] ^= 0x40
        with pytest.raises(BackupError, match="this backup is damaged"):
            read(bytes(flipped), key)


def test_a_changed_byte_in_the_header_is_refused(made, key):
    data = made[1]
    for at in range(len(archive.MAGIC), header_end(data), 7):
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        with pytest.raises(BackupError):
            read(bytes(flipped), key)


def test_a_cut_at_every_chunk_boundary_and_inside_one_is_named(made, key):
    data = made[1]
    start = header_end(data) + 16
    cuts = [start + k * archive.SEALED for k in range((len(data) - start) // archive.SEALED + 1)]
    cuts += [start + archive.SEALED // 2, len(data) - 1]
    assert len(cuts) >= 6
    for cut in cuts:
        with pytest.raises(BackupError, match="cut short"):
            read(data[:cut], key)
    with pytest.raises(BackupError, match="cut short inside its header"):
        read(data[:header_end(data) - 10], key)


def test_a_file_that_is_no_age_file_is_named(key):
    for data in [b"", b"PK\x03\x04 a zip", b"hello world" * 100]:
        with pytest.raises(BackupError, match="not an age-encrypted file"):
            read(data, key)


def test_a_newer_format_is_refused_with_both_versions(tmp_path, key, monkeypatch):
    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(archive, "FORMAT", 2)
    data = written(tmp_path / "b.age", {}, [(archive.measure("f", tmp_path / "f"), tmp_path / "f")], key)
    monkeypatch.setattr(archive, "FORMAT", 1)
    with pytest.raises(BackupError, match=r"newer PAL-adin OS \(backup format 2; this box reads format 1"):
        read(data, key)


def age_file(plain: bytes, key) -> bytes:
    """`plain` encrypted to `key` by Debian's age, as anyone could."""
    return subprocess.run(["age", "-r", keys.recipient(key)], input=plain, capture_output=True, check=True).stdout


def tar_of(**members: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(out.getvalue())


def test_an_age_file_of_something_else_is_no_backup(key):
    with pytest.raises(BackupError, match="holds no PAL-adin backup"):
        read(age_file(b"my diary", key), key)
    with pytest.raises(BackupError, match="holds no PAL-adin backup"):
        read(age_file(tar_of(**{"notes.txt": b"hi"}), key), key)


def test_a_member_the_manifest_does_not_list_is_refused(key):
    manifest = json.dumps({"format": 1, "files": {}}).encode()
    with pytest.raises(BackupError, match="'../etc/passwd', which its manifest does not list"):
        read(age_file(tar_of(**{"manifest.json": manifest, "../etc/passwd": b"root"}), key), key)


def test_a_member_that_is_not_what_its_manifest_says_is_refused(key):
    manifest = json.dumps({"format": 1, "files": {"a": {"size": 2, "sha256": "0" * 64}}}).encode()
    with pytest.raises(BackupError, match="a in this backup does not match its manifest"):
        read(age_file(tar_of(**{"manifest.json": manifest, "a": b"hi"}), key), key)
    line = {"size": 2, "sha256": "0" * 64}
    manifest = json.dumps({"format": 1, "files": {"a": line, "b": line}}).encode()
    with pytest.raises(BackupError, match="lacks a, b, which its manifest lists"):
        read(age_file(tar_of(**{"manifest.json": manifest}), key), key)


def test_a_file_that_changes_while_it_is_backed_up_fails_the_backup(tmp_path, key):
    (tmp_path / "f").write_bytes(b"before")
    member = archive.measure("f", tmp_path / "f")
    (tmp_path / "f").write_bytes(b"after!")
    with pytest.raises(BackupError, match="f changed while it was being backed up"):
        written(tmp_path / "b.age", {}, [(member, tmp_path / "f")], key)


def test_debian_age_zstd_and_tar_read_a_backup_by_hand(made, key, tmp_path):
    """What docs/backups.md tells an owner to type on any computer."""
    contents, data = made
    (tmp_path / "backup.age").write_bytes(data)
    (tmp_path / "key.txt").write_text(str(key) + "\n")
    (tmp_path / "out").mkdir()
    subprocess.run("age -d -i key.txt backup.age | zstd -d | tar -x -C out", shell=True, cwd=tmp_path, check=True)
    unpacked = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert json.loads(unpacked.pop("manifest.json"))["box"] == "Kitchen" and unpacked == contents



@pytest.fixture(scope="module")
def sealed(key):
    return keys.seal(key, PASSPHRASE)


def test_a_sealed_key_is_age_scrypt_at_work_factor_18_and_opens_with_its_passphrase_only(sealed, key):
    body = "".join(sealed.strip().splitlines()[1:-1])
    header = base64.b64decode(body).split(b"\n---")[0].decode(errors="replace").splitlines()
    assert header[0] == "age-encryption.org/v1" and header[1].startswith("-> scrypt ")
    assert int(header[1].split()[3]) >= 18 and len(header) == 3  # the only recipient
    assert keys.unseal(sealed, PASSPHRASE) == key
    with pytest.raises(keys.BadKey, match="that passphrase does not open this sealed recovery key"):
        keys.unseal(sealed, PASSPHRASE.replace("7", "8"))
    with pytest.raises(keys.BadKey, match="not a sealed recovery key"):
        keys.unseal("AGE-SECRET-KEY-1", PASSPHRASE)
    with pytest.raises(keys.BadKey, match="cannot be opened"):
        keys.unseal(keys.ARMOR + "\nYWJj\n-----END AGE ENCRYPTED FILE-----\n", PASSPHRASE)


@pytest.mark.parametrize("weak, why", [("short words", "12 to 200 characters"), ("a" * 20, "too few characters"),
                                      ("two\nlines of it", "on one line")])
def test_a_weak_passphrase_seals_nothing(key, weak, why):
    with pytest.raises(keys.BadKey, match=why):
        keys.seal(key, weak)


def test_debian_age_opens_a_backup_with_the_sealed_key_and_its_passphrase(made, sealed, tmp_path):
    """docs/backups.md: `age -d -i recovery-key-XXXX-XXXX.age BACKUP.age` asks for the passphrase."""
    contents, data = made
    (tmp_path / "backup.age").write_bytes(data)
    (tmp_path / "recovery-key.age").write_text(sealed)
    opened = command.answered(["sh", "-c", f"cd {tmp_path} && age -d -i recovery-key.age backup.age | zstd -d | "
                                           "tar -x -O paladin.db | sha256sum"], [PASSPHRASE], timeout=60)
    assert opened.split()[0] == hashlib.sha256(contents["paladin.db"]).hexdigest()
