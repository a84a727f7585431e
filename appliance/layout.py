"""Where the box keeps its state: one frozen object per state directory, one property per file or directory
in it, so that no module spells a state file's name.  Standard library only, like facts.py: the build
host's checks (tests/test_facts.py) read the same properties as the box."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import facts


# A verified backup, on the box (`DataDir.backups`) or a USB stick: paladin-<box>-<UTC time>-<fingerprint>.age;
# the key's fingerprint outside the ciphertext names the recovery kit it needs.
BACKUP_NAME = re.compile(r"paladin-[\w-]*?-(\d{8}-\d{6})-([A-Z2-7]{4}-[A-Z2-7]{4})\.age")


def _in_root(*parts: str) -> property:
    """A path below the state directory's `root`."""
    return property(lambda self: self.root.joinpath(*parts))


@dataclass(frozen=True)
class FetchWork:
    """Where an update's release is fetched: the unprivileged fetcher's work directory in the assistant's data
    (`DataDir.update`), or the console's install, which fetches in its own process (`UpdateState.fetch`)."""
    root: Path

    status = _in_root("status.json")  # the fetcher's phase and byte counts
    metadata = _in_root("metadata")  # its copy of the trusted metadata, refreshed
    mirror = _in_root("mirror")  # what it fetched, for root to check again
    bundle = _in_root("bundle")  # an offline bundle, unpacked while it is read
    tmp = _in_root("tmp")


@dataclass(frozen=True)
class UpdateState:
    """The updater's own directory (root's; its files readable by all, but for what python-tuf trusts)."""
    root: Path = Path(facts.UPDATE_STATE)

    status = _in_root("status.json")  # the current or last attempt
    snapshot = _in_root("snapshot.json")  # slots and boot entries, for the web UI
    attempts = _in_root("attempts.json")  # the boot assessments
    job = _in_root("job.json")  # what the fetcher is asked to do
    trusted = _in_root("trusted")  # the trusted metadata, published for the fetcher
    metadata = _in_root("metadata")  # python-tuf's trusted metadata, root's alone
    staging = _in_root("staging")  # the release checked again, before sysupdate writes it
    tmp = _in_root("tmp")

    @property
    def fetch(self) -> FetchWork:
        return FetchWork(self.root / "fetch")


@dataclass(frozen=True)
class FirewallState:
    """Where the firewall helper keeps what it owns (root's; the assistant may read all but the host keys)."""
    root: Path = Path(facts.FIREWALL_STATE)

    settings = _in_root("settings.yaml")  # the owner's firewall settings, the helper's to write
    last_good = _in_root("ruleset.nft")
    outcome = _in_root("outcome.json")
    ssh = _in_root("ssh")
    authorized_keys = _in_root("ssh", "authorized_keys")
    host_key = _in_root("ssh", "ssh_host_ed25519_key")
    host_key_public = _in_root("ssh", "ssh_host_ed25519_key.pub")


@dataclass(frozen=True)
class StickState:
    """Where the USB stick helper keeps what the assistant may read, and mounts a stick (in its own namespace)."""
    root: Path = Path(facts.STICK_STATE)

    sticks = _in_root("sticks.json")  # the sticks it last saw and how the last request ended
    mount = _in_root("mnt")


@dataclass(frozen=True)
class GovernorState:
    """The resource governor's own directory (its user's): its history, which survives restarts."""
    root: Path = Path(facts.GOVERNOR_STATE)

    history = _in_root("history.sqlite")


@dataclass(frozen=True)
class DeviceDir:
    """The box's own secrets on the data partition (the assistant's alone, mode 0700)."""
    root: Path

    tls_key = _in_root("tls-key.pem")
    tls_certificate = _in_root("tls-cert.pem")
    session_key_file = _in_root("session.key")  # signs the owner's browser sessions
    setup_code_file = _in_root("setup-code")  # until setup is finished
    refused_code_file = _in_root("setup-code.refused")  # why the PALADIN drive's code was not used
    recovery_key = _in_root("recovery-key")  # the age identity backups are encrypted to (backup/keys.py)
    recovery_key_proposed = _in_root("recovery-key.proposed")  # shown to the owner, not yet typed back


@dataclass(frozen=True)
class DataDir:
    """The assistant's data directory, on the data partition."""
    root: Path = Path(facts.DATA_DIR)

    database = _in_root("paladin.db")
    owner_config = _in_root("config.yaml")  # the owner's settings, written by the assistant
    models = _in_root("models")  # the model store: installed GGUF files, and downloads under way
    requests = _in_root("requests")  # the request channel's inbox (channel.py), read by root's helpers
    proofs = _in_root("proofs.json")  # the llama.cpp CPU variant that runs here, and the models it loaded
    backups = _in_root("backups")  # the verified backups made on the box (*.age)
    backup_work = _in_root("backups", ".work")  # the database's copy while a backup is made
    backup_lock = _in_root("backups", ".lock")  # one backup at a time, whoever makes it
    backup_outcome = _in_root("backups", "outcome.json")  # the last attempt's failure, if any
    restore = _in_root("restore")  # a restore being checked, or confirmed and waiting for the next start
    restore_files = _in_root("restore", "files")  # its checked files, laid out as in the data directory
    restore_preview = _in_root("restore", "preview.json")  # what it brings, for the owner to confirm
    restore_commit = _in_root("restore", "commit")  # the owner confirmed: the next start puts it in place

    def sealed_key(self, fingerprint: str) -> Path:
        """The recovery key `fingerprint` sealed with its owner's passphrase, beside the backups it opens."""
        return self.backups / f"recovery-key-{fingerprint}.age"

    @property
    def device(self) -> DeviceDir:
        return DeviceDir(self.root / "device")

    @property
    def update(self) -> FetchWork:
        return FetchWork(self.root / "update")

    def beneath(self, path: Path) -> str:
        """`path` relative to the data directory, as files.open_beneath takes it."""
        return str(path.relative_to(self.root))
