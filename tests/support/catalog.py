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


@contextlib.contextmanager
def served_catalog(directory: Path, model: Path, tier: str = "helper"):
    """A catalog file in `directory` naming `model` as tier `tier`, served until the block ends."""
    www = directory / "www"
    www.mkdir()
    shutil.copy(model, www / f"{tier}.gguf")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    catalog = directory / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"tiers": [{
        "name": tier, "file": f"{tier}.gguf", "size": model.stat().st_size, "ram": 64 * 2**20,
        "url": f"http://127.0.0.1:{httpd.server_address[1]}/{tier}.gguf",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}]}))
    try:
        yield catalog
    finally:
        httpd.shutdown()
