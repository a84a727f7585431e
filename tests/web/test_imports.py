"""The web worker runs unprivileged: once its app exists, nothing root-only is imported in it."""

import pytest

from appliance import device
from tests.support.closure import WORKER, loaded

pytestmark = pytest.mark.system

# Everything of the appliance the worker may hold besides its own packages (web, inference): the modules
# every process shares, of each root helper its privilege-free read side alone, of the governor (its own
# user) the client and the protocol they share.
WORKER_PACKAGES = ("appliance.web", "appliance.inference")
SHARED = {"appliance", "appliance.access", "appliance.catalog", "appliance.certificate", "appliance.channel", "appliance.command",
          "appliance.config", "appliance.config.schema", "appliance.config.settings", "appliance.config.sources",
          "appliance.conversations", "appliance.downloads", "appliance.db", "appliance.device", "appliance.errors",
          "appliance.facts", "appliance.files", "appliance.firstboot", "appliance.layout", "appliance.metrics",
          "appliance.owner",
          "appliance.sessions", "appliance.speed", "appliance.store", "appliance.systemd", "appliance.tokens",
          # backups: the worker makes and restores them, and `paladin backup` (the daily timer) makes them
          "appliance.backup", "appliance.backup.archive", "appliance.backup.contents", "appliance.backup.keys",
          "appliance.backup.restore", "appliance.backup.swap"}
READ_SIDES = {"appliance.firewall", "appliance.firewall.state",  # the owner's settings, the outcome, the host key
              "appliance.update", "appliance.update.status"}  # the updater's state files, the running version
CLIENT_SIDES = {"appliance.governor", "appliance.governor.client", "appliance.governor.protocol"}


def test_the_web_worker_imports_only_the_appliance_modules_it_may_no_tuf_and_no_host_code(tmp_path):
    modules = loaded(WORKER, tmp_path)
    assert "appliance.web.app" in modules and "appliance.inference.engine" in modules
    ours = {m for m in modules if m.split(".")[0] == "appliance"}
    assert {m for m in ours if not m.startswith(WORKER_PACKAGES)} - SHARED - READ_SIDES - CLIENT_SIDES == set()
    assert not {m for m in modules if m.split(".")[0] in ("tuf", "securesystemslib", "buildhost")}


WORKER_ONLY = {"cryptography", "llama_cpp", "numpy", "jinja2", "markdown_it", "nh3", "zstandard", "segno"}
# What `paladin serve` does before gunicorn forks its worker, on a box whose secrets exist.
ARBITER = """
import sys
from appliance import cli, config, firstboot
from appliance.backup import swap
from appliance.web import server
made = config.parse({"data_dir": sys.argv[1]})
swap.finish(made.data)
firstboot.prepare(made)
"""


def test_gunicorns_arbiter_loads_no_model_code_and_no_cryptography(tmp_path):
    """The arbiter holds no model and no secret: what it imports only costs memory (the RSS budget)."""
    device.ensure(tmp_path)  # the first boot's, made before
    heavy = {m.split(".")[0] for m in loaded(ARBITER, tmp_path)} & WORKER_ONLY
    assert not heavy, heavy
