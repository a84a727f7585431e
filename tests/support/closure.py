"""What a process of the box (or build.py) imports: its entry point run in a fresh interpreter, and
`sys.modules` read once it has set itself up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from buildhost import ROOT

PRINT = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
# The worker imports the app and makes it, as gunicorn's worker does after the fork.
WORKER = """
import sys
from appliance import config
from appliance.web.app import create_app
create_app(config.parse({"data_dir": sys.argv[1]}))
"""


def loaded(code: str, data_dir: Path) -> set[str]:
    """The modules in `sys.modules` after `code` ran (with `data_dir` as its sys.argv[1])."""
    out = subprocess.run([sys.executable, "-c", code + PRINT, data_dir], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return set(json.loads(out.stdout))
