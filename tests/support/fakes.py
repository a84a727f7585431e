"""Stand-ins shaped like the real thing, for tests that need many of them quickly."""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

from appliance import facts


def fake_image(out: Path, version: str, arch: str = "x86-64", machine: int = 0x8664, root_bytes: int = 300_000,
               board: str = "uefi") -> Path:
    """The files `build.py image` leaves for a release: small, but shaped like the real ones."""
    out.mkdir(parents=True, exist_ok=True)
    stem = facts.image_name(version, facts.flavour(arch, board))
    (out / f"{stem}.raw").write_bytes(b"disk")
    with (out / f"{stem}.root-{arch}.{uuid.uuid4()}.raw").open("wb") as root:
        root.write(os.urandom(min(root_bytes, 1 << 20)))
        root.truncate(root_bytes)  # sparse beyond the first MiB: a large slot image costs nothing here
    (out / f"{stem}.root-{arch}-verity.{uuid.uuid4()}.raw").write_bytes(b"v" * 4096)
    if board == "rpi":  # a boot partition (buildhost/rpi.py) instead of a UKI
        (out / f"{stem}.boot.{uuid.uuid4()}.raw").write_bytes(b"FAT" + version.encode() + bytes(4096))
        return out / f"{stem}.raw"
    pe = bytearray(512)
    pe[:2] = b"MZ"
    struct.pack_into("<I", pe, 0x3C, 0x80)
    pe[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", pe, 0x84, machine)
    (out / f"{stem}.efi").write_bytes(bytes(pe) + version.encode())
    return out / f"{stem}.raw"


EPSILON = b"llama.attention.layer_norm_rms_epsilon"


def malformed_model(model: Path, dest: Path) -> Path:
    """`model` with a negative RMS-norm epsilon: llama.cpp loads it, then GGML_ASSERTs at the first decode,
    as it does on a damaged or hand-edited GGUF, aborting the process that mapped it."""
    data = model.read_bytes()
    at = data.index(EPSILON) + len(EPSILON)
    assert struct.unpack_from("<I", data, at)[0] == 6  # GGUF's FLOAT32
    dest.write_bytes(data[:at + 4] + struct.pack("<f", -1.0) + data[at + 8:])
    return dest
