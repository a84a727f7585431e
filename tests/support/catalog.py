"""A model catalog whose one tier is served over real HTTP from 127.0.0.1, for download tests."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def tier_entry(name: str, url: str, size: int, sha256: str, **given) -> dict:
    """One tier of a catalog file (appliance/catalog.py), of a small model's shape unless `given` says else."""
    return {"name": name, "ollama": f"{name}:1b", "file": f"{name}.gguf", "url": url, "size": size, "sha256": sha256,
            "licence": "Apache-2.0", "context": 8192, "tools": "hermes", "layers": 2, "kv_heads": 1,
            "head_dim": 64, "embedding": 128, "heads": 2, "feed_forward": 384, "vocab": 1200} | given


@contextlib.contextmanager
def served_catalog(directory: Path, model: Path, tier: str = "helper", latest: dict | None = None, **given):
    """A catalog file in `directory` naming `model` as tier `tier` (its other fields as `given`; `latest`, what
    bare Ollama names mean), served until the block ends."""
    www = directory / "www"
    www.mkdir()
    shutil.copy(model, www / f"{tier}.gguf")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    catalog = directory / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"latest": latest or {}, "tiers": [tier_entry(
        tier, f"http://127.0.0.1:{httpd.server_address[1]}/{tier}.gguf", model.stat().st_size,
        hashlib.sha256(model.read_bytes()).hexdigest(), **given)]}))
    try:
        yield catalog
    finally:
        httpd.shutdown()
