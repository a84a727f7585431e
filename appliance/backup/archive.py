"""The backup file (docs/backups.md, "The format"): a standard age v1 file (the C2SP age spec) whose
plaintext is a zstd-compressed POSIX tar, so that `age -d -i KEY FILE | zstd -d | tar x` reads it on any
computer, without this software.

The tar's first member is `manifest.json`: the format's version, what the caller adds (schema, box,
product, key...) and every other member's size and SHA-256.  Reading takes back only listed members, each
checked against its line, and hands each to the caller's sink as it streams by: nothing is staged whole.

age seals the payload in chunks of 64 KiB (ChaCha20-Poly1305, the last one flagged), so a changed or cut
file fails to decrypt.  Debian's `age` does all of the cryptography, in a process of its own beside the tar
and zstd side (command.stream): a library in this process (pyrage) held the interpreter's lock while it
encrypted, and a backup took twice as long.  To tell a cut from a changed byte, the plaintext is padded with
a zstd skippable frame (which zstd and tar pass over) to end one byte past a chunk boundary: a whole file's
payload is always n × 65 552 + 17 bytes long.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from .. import command
from .keys import AGE, fingerprint, recipient

FORMAT = 1
MANIFEST = "manifest.json"
MAGIC = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024
SEALED = CHUNK + 16  # a chunk as stored: its plaintext and the Poly1305 tag
LAST = 1  # plaintext bytes in every backup's last chunk
MAX_MANIFEST = 1 << 20
HEADER_SCAN = 4096  # an age header this box writes is a few hundred bytes
COPY = 1 << 20
SKIPPABLE = 0x184D2A50  # zstd's first skippable-frame magic number
SHA256 = re.compile(r"[0-9a-f]{64}")


class BackupError(ValueError):
    """A backup cannot be written or read; the message says what is wrong and what to do."""


class NotEnoughSpace(BackupError):
    """The data partition cannot hold what a backup or a restore would write."""


@dataclass(frozen=True)
class Member:
    """A file as the manifest lists it."""
    name: str
    size: int
    sha256: str


def measure(name: str, path: Path) -> Member:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(COPY):
            digest.update(block)
            size += len(block)
    return Member(name, size, digest.hexdigest())


def padding(length: int) -> bytes:
    """A skippable frame taking `length` bytes of plaintext to LAST bytes past a chunk boundary."""
    size = (LAST - length - 8) % CHUNK
    return struct.pack("<II", SKIPPABLE, size) + bytes(size)


class _Counting(io.RawIOBase):
    """Bytes written through to `sink`, counted."""

    def __init__(self, sink: BinaryIO):
        self.sink, self.count = sink, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sink.write(data)
        self.count += len(data)
        return len(data)


def write(out: BinaryIO, head: dict, members: list[tuple[Member, Path]], recipient: str) -> None:
    """The backup of `members` (each read from its path, which must still hold what `measure` saw) with the
    manifest `head` + format + files, encrypted to `recipient`, written into the file `out`."""
    manifest = json.dumps({**head, "format": FORMAT,
                           "files": {m.name: {"size": m.size, "sha256": m.sha256} for m, _ in members}},
                          indent=1).encode()
    age = command.stream([AGE, "--encrypt", "--recipient", recipient], stdin=subprocess.PIPE, stdout=out)
    _widen(age.stdin)
    try:
        with age.stdin:  # closed: the end of the plaintext
            counted = _Counting(age.stdin)
            with zstandard.ZstdCompressor(level=3).stream_writer(counted, closefd=False) as packed:
                with tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT, bufsize=COPY,
                                  copybufsize=COPY) as tar:
                    _add(tar, MANIFEST, io.BytesIO(manifest), len(manifest))
                    for member, path in members:
                        _add_file(tar, member, path)
            counted.write(padding(counted.count))
    except BrokenPipeError:
        pass  # age ended early: what it said is the error
    finally:
        problem = command.said(age)
    if problem is not None:
        if "no space left" in problem:
            raise OSError(errno.ENOSPC, f"the backup filled the disk ({problem})")
        raise BackupError(f"age could not write the backup: {problem}")


def _widen(pipe: BinaryIO) -> None:
    """A pipe to or from age as wide as Linux lets an unprivileged process have it (1 MiB): fewer switches."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, COPY)


def _add(tar: tarfile.TarFile, name: str, data: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    tar.addfile(info, data)


class _Hashing(io.RawIOBase):
    def __init__(self, source: BinaryIO):
        self.source, self.digest, self.count = source, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.source.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        self.count += n
        return n


def _add_file(tar: tarfile.TarFile, member: Member, path: Path) -> None:
    with path.open("rb") as f:
        hashing = _Hashing(f)
        try:
            _add(tar, member.name, hashing, member.size)
        except OSError as err:
            if "unexpected end of data" not in str(err):
                raise
        if hashing.count != member.size or f.read(1) or hashing.digest.hexdigest() != member.sha256:
            raise BackupError(f"{member.name} changed while it was being backed up; make the backup again")


class Sink:
    """Where a reader's members go: `accept` sees the manifest before any member (and raises BackupError to
    refuse it), `open` gives each member's destination."""

    def accept(self, manifest: dict) -> None:
        pass

    def open(self, member: Member) -> BinaryIO:
        return _Discard()


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return len(data)


class _Source:
    """The backup's bytes as age reads them: counted, the first HEADER_SCAN kept to find the header."""

    def __init__(self, source: BinaryIO, first: bytes):
        self.source, self.first, self.count, self.start = source, first, len(first), bytearray(first)

    def feed(self, into: BinaryIO) -> None:
        """Everything to age, until the end or until age stops reading (it stops at the first bad chunk)."""
        try:
            with into:
                into.write(self.first)
                while block := self.source.read(COPY):
                    if len(self.start) < HEADER_SCAN:
                        self.start += block[:HEADER_SCAN - len(self.start)]
                    self.count += len(block)
                    into.write(block)
        except OSError:
            pass  # age stopped reading (EPIPE), or the source broke off: age then reports a cut file

    def length(self) -> int:
        """The whole file's length, the rest read (age stops at the first bad chunk)."""
        while block := self.source.read(COPY):
            self.count += len(block)
        return self.count

    def payload(self) -> int | None:
        """How many bytes follow the header and its 16-byte nonce, or None when the header never ended."""
        mac = self.start.find(b"\n--- ")
        end = self.start.find(b"\n", mac + 1) if mac >= 0 else -1
        return None if end < 0 else self.length() - (end + 1) - 16


def read(source: BinaryIO, key: str, sink: Sink = Sink(), *, needs: str = "") -> dict:
    """The manifest of the backup read from `source`, after every member went to `sink` and matched its
    line.  `key`: the recovery key (AGE-SECRET-KEY-1...); `needs`: the fingerprint the file's name says it
    was made for, named when the key is wrong."""
    first = source.read(len(MAGIC))
    if first != MAGIC:
        raise BackupError("this is not a PAL-adin backup: it is not an age-encrypted file (a backup's name ends "
                          "in .age; choose the file the box or its USB stick holds)")
    origin = _Source(source, first)
    given = command.holding(key.encode() + b"\n")
    try:
        age = command.stream([AGE, "--decrypt", "--identity", f"/dev/fd/{given}"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, pass_fds=(given,))
    finally:
        os.close(given)
    _widen(age.stdin)
    feeding = threading.Thread(target=origin.feed, args=(age.stdin,), name="backup-feed", daemon=True)
    feeding.start()
    refused: Exception | None = None  # the manifest or the sink said no: that is the answer
    problem: Exception | None = None  # the plaintext is no backup, or the decryption failed under it
    try:
        with age.stdout as plain:  # closed, it stops age (SIGPIPE), and age's end stops the feeding (EPIPE)
            try:
                manifest = _unpack(plain, sink)
                _drain(plain)  # the padding: age checks the last chunk only when it is read
            except BackupError as err:
                refused = err
            except (tarfile.TarError, zstandard.ZstdError, OSError, EOFError, ValueError) as err:
                if isinstance(err, OSError) and err.errno is not None:
                    refused = err  # the sink's own failure (a full disk), not the backup's
                else:
                    problem = err
                    _drain(plain)
    finally:
        feeding.join()
        failed = command.said(age)
    if refused is not None:
        raise refused
    if failed is not None:
        raise _decrypt_error(failed, origin, key, needs) from None
    if problem is not None:
        raise BackupError("this age file opens with the key but holds no PAL-adin backup "
                          f"({type(problem).__name__}: {str(problem)[:120]})") from None
    return manifest


def _drain(source: BinaryIO) -> None:
    while source.read(COPY):
        pass


def _decrypt_error(said: str, origin: _Source, key: str, needs: str) -> BackupError:
    if "no identity matched" in said:
        made_for = f"the recovery key {needs}" if needs else "another recovery key"
        return BackupError(f"this backup was made for {made_for}; the key given is {fingerprint(recipient(key))}. "
                           "Type the key from the recovery kit of the box that made it")
    if b"-> scrypt " in origin.start:
        return BackupError("this age file is sealed with a passphrase, not a recovery key")
    payload = origin.payload()
    if payload is None:
        return BackupError("this backup is cut short inside its header: copy the whole file again")
    if payload % SEALED != LAST + 16:
        return BackupError(f"this backup is cut short ({origin.count} bytes; the end of the file is missing): "
                           "copy the whole file again, or choose another backup")
    return BackupError("this backup is damaged: some of its bytes changed after it was written (a failing "
                       f"card or stick?), so it cannot be trusted; choose another backup (age: {said[:100]})")


def _unpack(plain: BinaryIO, sink: Sink) -> dict:
    packed = zstandard.ZstdDecompressor().stream_reader(plain, read_across_frames=False, closefd=False)
    with tarfile.open(fileobj=packed, mode="r|", bufsize=COPY) as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST:
            raise ValueError(f"its first member is not a {MANIFEST}")
        manifest = _manifest(tar.extractfile(first).read())
        listed = {name: Member(name, line["size"], line["sha256"]) for name, line in manifest["files"].items()}
        sink.accept(manifest)
        seen = set()
        while (entry := tar.next()) is not None:
            member = listed.get(entry.name)
            if member is None or entry.name in seen or not entry.isfile() or entry.size != member.size:
                raise BackupError(f"this backup holds {entry.name[:100]!r}, which its manifest does not list as "
                                  "such: it was not made by PAL-adin OS")
            seen.add(entry.name)
            _copy(tar.extractfile(entry), member, sink)
        if missing := set(listed) - seen:
            raise BackupError(f"this backup lacks {', '.join(sorted(missing))}, which its manifest lists")
        packed.read()  # the rest of the zstd frame: the tar's end-of-record padding
    return manifest


def _copy(source: BinaryIO, member: Member, sink: Sink) -> None:
    digest = hashlib.sha256()
    with sink.open(member) as out:
        while block := source.read(COPY):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != member.sha256:
        raise BackupError(f"{member.name} in this backup does not match its manifest: it was not made by PAL-adin "
                          "OS, or not whole")


def _manifest(raw: bytes) -> dict:
    manifest = json.loads(raw)
    if not isinstance(manifest, dict) or type(manifest.get("format")) is not int:
        raise ValueError("the manifest has no format")
    if manifest["format"] > FORMAT:
        raise BackupError(f"this backup was made by a newer PAL-adin OS (backup format {manifest['format']}; this "
                          f"box reads format {FORMAT} and older): update this box first, then restore")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(line, dict) and type(line.get("size")) is int and line["size"] >= 0
            and isinstance(line.get("sha256"), str) and SHA256.fullmatch(line["sha256"]) for line in files.values()):
        raise ValueError("the manifest's files are not a table of sizes and hashes")
    return manifest
