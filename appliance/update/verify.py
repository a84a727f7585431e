"""Root's second check of what the unprivileged fetcher left: nothing it wrote is trusted."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuf.api.metadata import TargetFile

from ..layout import UpdateState
from .progress import Progress
from .release import Box
from .trust import DirectoryFetcher, client, download, refresh, refusals, trust_root


def verified_release(mirror: Path, state: UpdateState, progress: Progress, box: Box, *,
                     offline: bool) -> tuple[str, dict[str, TargetFile]]:
    """Root: the fetcher's `mirror` checked again by a client of its own, from the stored trusted
    metadata, and the chosen release copied into the staging directory; nothing else is written."""
    staging = state.staging
    with refusals(staging):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        state.tmp.mkdir(exist_ok=True)
        trust_root(state.metadata)
        progress.set(phase="check")
        updater = client(mirror.as_uri(), state.metadata, DirectoryFetcher(progress, mirror),
                         prefix_targets_with_hash=False)
        version, chosen = refresh(updater, state.metadata, box, mirror if offline else None)
        download(updater, version, chosen, box, progress, staging, lambda info: staging / Path(info.path).name)
        return version, chosen
