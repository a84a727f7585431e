"""What a GGUF file's header says about the memory its context needs, read without loading the model.

The governor's ladder orders models by the memory they need: the file (mapped weights) plus the KV
cache, whose size per token is fixed by the architecture: layers x (key + value width) x KV heads x 2
bytes (f16).  The header is read as untrusted input: every count and length is bounded, and reading
stops as soon as the few keys needed are in.
"""

from __future__ import annotations

import struct
from pathlib import Path

MAX_KEYS = 100_000
MAX_STRING = 1 << 20
MAX_ARRAY = 1 << 24
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class HeaderError(ValueError):
    """Not a GGUF header this box can read; the message says where it went wrong."""


class _Reader:
    def __init__(self, f):
        self.f = f

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise HeaderError("the header ends early")
        return struct.unpack("<" + fmt, data)[0]

    def string(self) -> str:
        length = self.take("Q")
        if length > MAX_STRING:
            raise HeaderError(f"a string of {length} bytes")
        data = self.f.read(length)
        if len(data) != length:
            raise HeaderError("the header ends early")
        return data.decode("utf-8", "replace")

    def value(self, kind: int):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.take("I"), self.take("Q")
            if count > MAX_ARRAY or item == ARRAY:
                raise HeaderError(f"an array of {count} items")
            if item in SCALARS:  # numbers are kept (per-layer head counts), without unpacking them one by one
                size = struct.calcsize("<" + SCALARS[item])
                data = self.f.read(size * count)
                if len(data) != size * count:
                    raise HeaderError("the header ends early")
                return list(struct.unpack(f"<{count}{SCALARS[item]}", data))
            for _ in range(count):
                self.value(item)
            return None
        raise HeaderError(f"value type {kind}")


def kv_bytes_per_token(path: Path) -> int:
    """Bytes of f16 KV cache one token of context takes in the model at `path`."""
    with open(path, "rb") as raw:
        reader = _Reader(raw)
        if raw.read(4) != b"GGUF":
            raise HeaderError(f"{path} is not a GGUF file")
        reader.take("I")
        reader.take("Q")
        count = reader.take("Q")
        if count > MAX_KEYS:
            raise HeaderError(f"{count} header keys")
        meta: dict = {}
        arch = None
        for _ in range(count):
            key = reader.string()
            arch = meta.get("general.architecture")
            # The model's keys come before the tokenizer's (its vocabulary is most of the header), but the
            # optional key and value lengths (Gemma's heads are wider than the width over the heads) come
            # after the head counts: the first tokenizer key, not the last head count, ends the search.
            if key.startswith("tokenizer.") and arch and all(f"{arch}.{k}" in meta for k in (
                    "block_count", "embedding_length", "attention.head_count")):
                break
            meta[key] = reader.value(reader.take("I"))
    if not arch or f"{arch}.block_count" not in meta:
        raise HeaderError(f"{path} does not say how many layers it has")

    def number(key: str, default=None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        value = max(value) if isinstance(value, list) and value else value
        if not isinstance(value, int) or value < 0:
            raise HeaderError(f"{path}: {arch}.{key} is not a count")
        return value

    heads = number("attention.head_count")
    width = number("embedding_length") // max(1, heads)
    kv_heads = number("attention.head_count_kv", heads)
    key, value = number("attention.key_length", width), number("attention.value_length", width)
    return number("block_count") * kv_heads * (key + value) * 2
