"""Code that runs only on the build host: image builds, Debian archive access, wheels, qemu, release
signing, generated test models.  It is never installed into an image (a test checks the image's venv).

`build.py` is its command line.  Everything here but `release` and `tinymodel` uses the standard
library only, so `build.py` can run before the virtual environment exists; those two run inside it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paladin"
