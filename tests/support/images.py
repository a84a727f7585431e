"""The image layer's builds, started at the session's first test and run in a thread beside the faster
layers: mkosi then works on the core they leave idle instead of after them, and the images are ready, or
nearly, when the first VM is to boot.

What the image tests boot is planned here, once: v1 (the shared box and the update boxes; the one image
compressed, since its size for flashing is checked), v2 (released into a repository for the update
boxes) and v3, whose extra tree breaks its assistant (a listener on an address no box has) and keeps
systemd from restarting it, so each of its boots is assessed at its first failure.  Only v3 carries
test-only settings, and none of them reaches the shipped image.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from buildhost import ROOT
from tests.support.vm import build_image, release, run_build

# Valid for the updater, fatal for the assistant: no listener can bind an address the box does not have.
BROKEN_CONFIG = "data_dir: /var/lib/paladin\nserver:\n  listen: 192.0.2.1:8080\n"
NO_RESTART = "[Service]\nRestart=no\n"
COMPRESSED = "1"
RELEASED = "2"


def broken_tree(work: Path) -> Path:
    """v3's extra tree: the broken configuration, and no restarts of the assistant."""
    tree = work / "broken-tree"
    (tree / "etc/paladin").mkdir(parents=True)
    (tree / "etc/paladin/paladin.yaml").write_text(BROKEN_CONFIG)
    (tree / "etc/systemd/system/paladin.service.d").mkdir(parents=True)
    (tree / "etc/systemd/system/paladin.service.d/test-no-restart.conf").write_text(NO_RESTART)
    return tree


class Builds:
    """Release keys made for the run, and the planned images built one after the other in one thread;
    `image(version)` waits for one (a build's failure is raised there, in the test that needs it), and
    `repository` is where v2 is released once built."""

    def __init__(self, work: Path, model: Path):
        self.work, self.model = work, model
        self.keys = work / "keys"
        run_build(ROOT / "build.py", "keys", "init", "--keys", self.keys)
        self.repository = work / "www/repo"
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="image-builds")
        self._built = {version: self._thread.submit(self._build, version) for version in ("1", "2", "3")}

    def _build(self, version: str) -> dict:
        tree = broken_tree(self.work) if version == "3" else None
        report = build_image(version, self.work / f"image-{version}", self.model, self.keys, extra_tree=tree,
                             compress=version == COMPRESSED)
        if version == RELEASED:
            release(report, self.repository, self.keys)
        return report

    def image(self, version: str) -> dict:
        """The build report of `version` (`build.py image --json`), once it is built."""
        return self._built[version].result()

    def close(self) -> None:
        for pending in self._built.values():
            pending.cancel()
        self._thread.shutdown(wait=True)
