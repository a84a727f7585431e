"""The one way the unprivileged web worker asks a root helper to act.

The worker drops one request per helper as `<data_dir>/requests/<helper>.json` (and, where a request
carries a file, `<helper>.<name>` beside it); a path unit starts the helper, which takes the request
out of the directory and validates it against the helper's closed schema before acting.  A request
names choices, never a URL, a path or a command: the update request says "the owner's configured
repository" or "the uploaded bundle", and the helper resolves those itself.  The worker is not
trusted: everything it wrote is read without following links (files.open_beneath), bounded, and
refused unless it fits exactly.

Privilege-free and small: both the worker and the helpers import it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import files
from .layout import DataDir

MAX_BYTES = 4096


@dataclass(frozen=True)
class UpdateRequest:
    """paladin-update: install the newest release from `source`; reboot into it (None: as configured)."""
    source: Literal["online", "bundle"]
    reboot: bool | None = None


@dataclass(frozen=True)
class FirewallRequest:
    """paladin-firewall: the owner's firewall settings, whole (each value is validated as config.FirewallConfig)."""
    lan: str
    privacy: bool
    ssh: bool
    ssh_key: str


@dataclass(frozen=True)
class StickRequest:
    """paladin-stick: look for USB sticks, or copy the box's backup `backup` (a file name) onto the stick a look
    named `stick` (its file system's UUID)."""
    action: Literal["look", "copy"]
    stick: str = ""
    backup: str = ""


# helper name -> its request type; adding a helper adds a line and a path unit.
HELPERS: dict[str, type] = {"update": UpdateRequest, "firewall": FirewallRequest, "stick": StickRequest}


class RequestError(ValueError):
    """A request does not fit its helper's schema; nothing was done."""


def inbox(data_dir: Path) -> Path:
    return DataDir(Path(data_dir)).requests


def attachment(data_dir: Path, helper: str, name: str) -> Path:
    return inbox(data_dir) / f"{helper}.{name}"


def _helper(request: object) -> str:
    return next(name for name, kind in HELPERS.items() if isinstance(request, kind))


def submit(data_dir: Path, request: object) -> None:
    """Hand `request` to its helper (replacing one not yet taken)."""
    data = json.dumps(dataclasses.asdict(request)).encode()
    files.write(inbox(data_dir) / f"{_helper(request)}.json", data, mode=0o600)


def pending(data_dir: Path, helper: str) -> bool:
    return (inbox(data_dir) / f"{helper}.json").exists()


def _fits(kind, value) -> bool:
    if typing.get_origin(kind) is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(kind))
    if isinstance(kind, types.UnionType):
        return any(_fits(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    return type(value) is kind  # exact: True is not an int, 1 is not a bool


def parse(kind: type, raw: object):
    """`raw` (decoded JSON) as a `kind`, or RequestError naming what does not fit."""
    if not isinstance(raw, dict):
        raise RequestError(f"a {kind.__name__} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    unknown = set(raw) - set(fields)
    if unknown:
        raise RequestError(f"a {kind.__name__} has no field {', '.join(sorted(map(str, unknown)))}")
    for name, f in fields.items():
        if name not in raw and f.default is dataclasses.MISSING:
            raise RequestError(f"a {kind.__name__} needs '{name}'")
        if name in raw and not _fits(hints[name], raw[name]):
            raise RequestError(f"{kind.__name__}.{name}: {json.dumps(raw[name])[:80]} is not allowed")
    return kind(**raw)


def _in_inbox(data_dir: Path, name: str) -> str:
    """The inbox's file `name`, as files.open_beneath and remove_beneath take it."""
    data = DataDir(Path(data_dir))
    return data.beneath(data.requests / name)


def _open(data_dir: Path, name: str):
    """A file the worker left in the inbox, opened as it is (never through a link, never a FIFO)."""
    try:
        return files.open_beneath(Path(data_dir), _in_inbox(data_dir, name))
    except files.NotPlain as err:
        raise RequestError(str(err)) from None


def take(data_dir: Path, helper: str):
    """The helper's pending request, removed from the inbox (so its path unit does not fire again),
    validated; None when there is none."""
    path = inbox(data_dir) / f"{helper}.json"
    try:
        with _open(data_dir, path.name) as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    finally:
        files.remove_beneath(Path(data_dir), _in_inbox(data_dir, path.name))
    if len(raw) > MAX_BYTES:
        raise RequestError(f"{path} is not a request of at most {MAX_BYTES} bytes")
    try:
        decoded = json.loads(raw)
    except ValueError:
        raise RequestError(f"{path} is not JSON") from None
    return parse(HELPERS[helper], decoded)


def remove_attachment(data_dir: Path, helper: str, name: str) -> None:
    files.remove_beneath(Path(data_dir), _in_inbox(data_dir, f"{helper}.{name}"))


def open_attachment(data_dir: Path, helper: str, name: str):
    """A file the worker attached to its request, opened for reading as it is (never through a link)."""
    try:
        return _open(data_dir, attachment(data_dir, helper, name).name)
    except FileNotFoundError:
        raise RequestError(f"no {name} was uploaded") from None
