"""The channel between the assistant and the governor: its messages, their limits and their codec.

One line of JSON each way over the governor's Unix socket.  The assistant sends a `Report` (every 2 s)
and gets an `Answer`: the rung to serve and the governor's status; or it sends a `HistoryQuery` and gets
the kept samples and decisions.  Both ends import this module and nothing of the other's (standard
library only); every field is checked here, by type and bound, and a message that does not fit is a
`MessageError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

MAX_LINE = 64 * 1024  # a message to the governor
MAX_REPLY = 4 * 2**20  # an answer: a history of 2000 samples and the decisions of a week
MAX_MODELS = 64
MAX_SETTINGS = 32
MAX_TEXT = 256
MAX_THREADS, MAX_CONTEXT, MAX_KV = 1024, 2**24, 2**30
Plain = str | int | float | bool


class MessageError(ValueError):
    """A message that does not fit; it changes nothing."""


def _value(raw: dict, key: str, kind: type, low: float = 0, high: float = 2**53, where: str = "report"):
    value = raw.get(key)
    if type(value) is not kind and not (kind is float and type(value) is int):
        raise MessageError(f"{where}.{key} must be {kind.__name__}")
    if kind in (int, float) and not low <= value <= high:
        raise MessageError(f"{where}.{key} is out of range")
    if kind is str and len(value) > MAX_TEXT:
        raise MessageError(f"{where}.{key} is too long")
    return value


@dataclass(frozen=True)
class Model:
    """A model on the box as the assistant reports it."""
    id: str
    bytes: int
    kv_bytes_per_token: int

    @classmethod
    def read(cls, raw: dict) -> Model:
        return cls(_value(raw, "id", str), _value(raw, "bytes", int), _value(raw, "kv_bytes_per_token", int, 0, MAX_KV))


@dataclass(frozen=True)
class Rung:
    """A model at a strength: what the governor wants served."""
    model: str
    threads: int
    context: int
    need: int  # bytes of memory: the weights and the KV cache

    def key(self) -> tuple[str, int, int]:
        return self.model, self.threads, self.context

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Report:
    """What the assistant has and does; `served` is the key of the rung it serves (None while it loads)."""
    models: tuple[Model, ...]
    chosen: str
    pinned: bool
    threads: int
    context: int
    served: tuple[str, int, int] | None
    cpu_seconds: float
    tokens_per_second: float
    settings: tuple[tuple[str, Plain], ...]  # the owner's governor settings, checked as configuration by the governor

    @classmethod
    def read(cls, raw: object) -> Report:
        if not isinstance(raw, dict):
            raise MessageError("a report is a JSON object")
        models = raw.get("models")
        if not isinstance(models, list) or len(models) > MAX_MODELS or not all(isinstance(m, dict) for m in models):
            raise MessageError(f"report.models must be a list of at most {MAX_MODELS} objects")
        served = raw.get("served")
        if served is not None and not isinstance(served, dict):
            raise MessageError("report.served must be an object or null")
        settings = raw.get("settings") or {}
        if not isinstance(settings, dict) or len(settings) > MAX_SETTINGS or \
                not all(isinstance(v, Plain) for v in settings.values()):
            raise MessageError("report.settings must be an object of plain values")
        return cls(
            models=tuple(Model.read(m) for m in models),
            chosen=_value(raw, "chosen", str), pinned=_value(raw, "pinned", bool),
            threads=_value(raw, "threads", int, 1, MAX_THREADS), context=_value(raw, "context", int, 1, MAX_CONTEXT),
            served=None if served is None else (_value(served, "model", str),
                                                _value(served, "threads", int, 1, MAX_THREADS),
                                                _value(served, "context", int, 1, MAX_CONTEXT)),
            cpu_seconds=_value(raw, "cpu_seconds", float), tokens_per_second=_value(raw, "tokens_per_second", float),
            settings=tuple(sorted(settings.items())))

    def as_dict(self) -> dict:
        return {"models": [dataclasses.asdict(m) for m in self.models], "chosen": self.chosen, "pinned": self.pinned,
                "threads": self.threads, "context": self.context,
                "served": self.served and dict(zip(("model", "threads", "context"), self.served)),
                "cpu_seconds": self.cpu_seconds, "tokens_per_second": self.tokens_per_second,
                "settings": dict(self.settings)}


@dataclass(frozen=True)
class HistoryQuery:
    """The samples and decisions kept since `since` (seconds since the epoch)."""
    since: float

    @classmethod
    def read(cls, raw: object) -> HistoryQuery:
        since = raw.get("since", 0) if isinstance(raw, dict) else None
        if type(since) not in (int, float):
            raise MessageError("history.since must be a number")
        return cls(float(since))


@dataclass(frozen=True)
class Answer:
    """The governor's answer to a report: the rung to serve (None with no model on the ladder) and its status,
    shown to the owner as it is."""
    rung: Rung | None
    status: dict

    @classmethod
    def read(cls, raw: dict) -> Answer:
        if not isinstance(raw.get("status"), dict):
            raise MessageError("the governor's answer has no status")
        rung = raw.get("rung")
        if rung is None:
            return cls(None, raw["status"])
        if not isinstance(rung, dict):
            raise MessageError("the governor's rung is not an object")
        return cls(Rung(_value(rung, "model", str, where="rung"), _value(rung, "threads", int, 1, MAX_THREADS, "rung"),
                        _value(rung, "context", int, 1, MAX_CONTEXT, "rung"), _value(rung, "need", int, where="rung")),
                   raw["status"])

    def as_dict(self) -> dict:
        return {"rung": self.rung.as_dict() if self.rung else None, "status": self.status}


def encode(message: Report | HistoryQuery | Answer | dict) -> bytes:
    """One line: a request under its name ({"report": ...}, {"history": ...}), an answer or a reply as it is."""
    body = {"report": message.as_dict()} if isinstance(message, Report) else \
        {"history": dataclasses.asdict(message)} if isinstance(message, HistoryQuery) else \
        message.as_dict() if isinstance(message, Answer) else message
    return json.dumps(body).encode() + b"\n"


def read_request(line: bytes) -> Report | HistoryQuery:
    """A line the governor received; MessageError for one that does not fit (ValueError for broken JSON,
    RecursionError for JSON nested past the parser's bound)."""
    message = json.loads(line)
    if not isinstance(message, dict) or len(message) != 1 or not {"report", "history"} & set(message):
        raise MessageError("a message is an object with one key: report or history")
    if "report" in message:
        return Report.read(message["report"])
    return HistoryQuery.read(message["history"])


def read_reply(line: bytes) -> dict:
    """A line the assistant received: an object, or MessageError with the governor's complaint."""
    reply = json.loads(line)
    if not isinstance(reply, dict) or "error" in reply:
        raise MessageError(f"the governor answered: {reply.get('error') if isinstance(reply, dict) else reply}")
    return reply
