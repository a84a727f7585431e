"""Where the box keeps its state: one frozen object per state directory, one property per file or directory
in it, so that no module spells a state file's name.  Standard library only, like facts.py: the build
host's checks (tests/test_facts.py) read the same properties as the box."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import facts


@dataclass(frozen=True)
class FetchWork:
    """Where an update's release is fetched: the unprivileged fetcher's work directory in the assistant's data
    (`DataDir.update`), or the console's install, which fetches in its own process (`UpdateState.fetch`)."""
    root: Path

    @property
    def status(self) -> Path:
        return self.root / "status.json"  # the fetcher's phase and byte counts

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"  # its copy of the trusted metadata, refreshed

    @property
    def mirror(self) -> Path:
        return self.root / "mirror"  # what it fetched, for root to check again

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"  # an offline bundle, unpacked while it is read

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


@dataclass(frozen=True)
class UpdateState:
    """The updater's own directory (root's; its files readable by all, but for what python-tuf trusts)."""
    root: Path = Path(facts.UPDATE_STATE)

    @property
    def status(self) -> Path:
        return self.root / "status.json"  # the current or last attempt

    @property
    def snapshot(self) -> Path:
        return self.root / "snapshot.json"  # slots and boot entries, for the web UI

    @property
    def attempts(self) -> Path:
        return self.root / "attempts.json"  # the boot assessments

    @property
    def job(self) -> Path:
        return self.root / "job.json"  # what the fetcher is asked to do

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"  # the trusted metadata, published for the fetcher

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"  # python-tuf's trusted metadata, root's alone

    @property
    def staging(self) -> Path:
        return self.root / "staging"  # the release checked again, before sysupdate writes it

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def fetch(self) -> FetchWork:
        return FetchWork(self.root / "fetch")


@dataclass(frozen=True)
class FirewallState:
    """Where the helper keeps what it owns (root's; the assistant may read all but the host keys)."""
    directory: Path = Path(facts.FIREWALL_STATE)

    @property
    def settings(self) -> Path:
        return self.directory / "settings.yaml"  # the owner's firewall settings, the helper's to write

    @property
    def last_good(self) -> Path:
        return self.directory / "ruleset.nft"

    @property
    def outcome(self) -> Path:
        return self.directory / "outcome.json"

    @property
    def ssh(self) -> Path:
        return self.directory / "ssh"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh / "authorized_keys"

    @property
    def host_key(self) -> Path:
        return self.ssh / "ssh_host_ed25519_key"

    @property
    def host_key_public(self) -> Path:
        return self.ssh / "ssh_host_ed25519_key.pub"


@dataclass(frozen=True)
class GovernorState:
    """The resource governor's own directory (its user's): its history, which survives restarts."""
    root: Path = Path(facts.GOVERNOR_STATE)

    @property
    def history(self) -> Path:
        return self.root / "history.sqlite"


@dataclass(frozen=True)
class DataDir:
    """The assistant's data directory, on the data partition."""
    root: Path = Path(facts.DATA_DIR)

    @property
    def update(self) -> FetchWork:
        return FetchWork(self.root / "update")

    def beneath(self, path: Path) -> str:
        """`path` relative to the data directory, as files.open_beneath takes it."""
        return str(path.relative_to(self.root))
