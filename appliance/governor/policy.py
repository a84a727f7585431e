"""When to step the model down or up: the ladder, the limits, their windows, and the decisions.

The ladder runs from the owner's model (the ceiling: the governor never serves more than the owner
chose) down to the smallest model on the box, by the memory each needs (its file and its context's
KV cache).  Between two models a graded rung keeps the model but halves its threads and its context:
less heat and CPU, less memory, without giving up the model's quality at once.

A limit crossed for `breach_seconds` without a break steps one rung down (each limit has a window of its
own: two limits crossed in turn hold neither long enough, and a decision names what really held);
everything safe (each value a margin back from its limit, and the bigger rung's memory fitting in what is
available) for `calm_seconds` steps one rung up; no two steps come closer than `dwell_seconds`.  A value
that only touches its limit now and then resets its window every time: it never moves the model.  While
the assistant has not yet swapped to the rung wanted (a long reply holds the old model), no window runs:
each step is judged on the rung actually served.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import GovernorConfig
from .protocol import Model, Rung
from .sensors import Sample

GIB = 2**30
MEMORY_PRESSURE = 10.0  # percent of time every task stalled on memory (PSI full avg10): thrashing
MIN_CONTEXT = 512


@dataclass(frozen=True)
class Limits:
    temperature: float
    cpu_percent: float
    memory_percent: float
    margin: float  # a fraction
    breach_seconds: float
    calm_seconds: float
    dwell_seconds: float

    @classmethod
    def for_board(cls, settings: GovernorConfig, memory_total: int, cores: int, board: str = "") -> "Limits":
        """The owner's limits, with the board's defaults where they are 0 (GovernorConfig.memory_reserve);
        few cores leave more room to others; a Raspberry Pi's firmware slows its CPU from 80 °C on, so the
        model steps down before that."""
        return cls(temperature=settings.temperature or (75 if board.startswith("Raspberry Pi") else 80),
                   cpu_percent=settings.cpu_percent or (60 if cores <= 4 else 75),
                   memory_percent=settings.memory_reserve(memory_total),
                   margin=settings.margin_percent / 100, breach_seconds=settings.breach_seconds,
                   calm_seconds=settings.calm_seconds, dwell_seconds=settings.dwell_seconds)


def ladder(models: list[Model], chosen: str, threads: int, context: int) -> list[Rung]:
    """Rungs from the owner's model down: each model at full strength, then at half threads and context."""
    def rungs(model: Model) -> list[Rung]:
        full = Rung(model.id, threads, context, model.bytes + context * model.kv_bytes_per_token)
        half_threads, half_context = max(1, threads // 2), max(MIN_CONTEXT, context // 2)
        if (half_threads, half_context) == (threads, context):
            return [full]
        return [full, Rung(model.id, half_threads, half_context, model.bytes + half_context * model.kv_bytes_per_token)]

    top = next((m for m in models if m.id == chosen), None)
    if top is None:
        return []
    smaller = sorted((m for m in models if m.id != chosen and m.bytes < top.bytes), key=lambda m: -m.bytes)
    return [rung for model in [top, *smaller] for rung in rungs(model)]


@dataclass(frozen=True)
class Decision:
    t: float
    action: str  # "down", "up", or "warn" (pinned, or nowhere left to go)
    source: str  # the rung served when it was taken ("" with none)
    target: str
    reason: str
    limit: str  # "temperature", "cpu", "memory", "power", or "safe" for a step up
    value: float
    threshold: float
    window: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def label(rung: Rung | None) -> str:
    return f"{rung.model} ({rung.threads} threads, {rung.context} context)" if rung else ""


def breaches(sample: Sample, limits: Limits) -> list[tuple[str, float, float, str]]:
    """The limits `sample` crosses: (limit, value, threshold, what it reads as)."""
    found = []
    if sample.temperature is not None and sample.temperature >= limits.temperature:
        found.append(("temperature", sample.temperature, limits.temperature,
                      f"temperature {sample.temperature:.1f} °C ≥ {limits.temperature:g} °C"))
    if sample.other_cpu > limits.cpu_percent:  # more than: a limit of 100 % is never crossed
        found.append(("cpu", sample.other_cpu, limits.cpu_percent,
                      f"other programs use {sample.other_cpu:.0f} % of the CPU > {limits.cpu_percent:g} %"))
    if sample.memory_percent <= limits.memory_percent:
        found.append(("memory", sample.memory_percent, limits.memory_percent,
                      f"available memory {sample.memory_percent:.1f} % ≤ {limits.memory_percent:g} %"))
    stalled = sample.pressure.get("memory_full")
    if stalled is not None and stalled >= MEMORY_PRESSURE:
        found.append(("memory", stalled, MEMORY_PRESSURE,
                      f"all tasks stalled on memory {stalled:.0f} % of the time ≥ {MEMORY_PRESSURE:g} %"))
    if sample.undervoltage:  # a smaller model draws less current, and the firmware slows the CPU meanwhile
        found.append(("power", 1.0, 0.0, "under-voltage: the power supply cannot keep up"))
    return found


def calm(sample: Sample, limits: Limits) -> bool:
    """Every value a margin back from its limit (memory is checked against the bigger rung: `fits`), and every
    sensor readable: what cannot be read is not known to be safe."""
    if sample.warnings:
        return False
    hot = sample.temperature is not None and sample.temperature > limits.temperature * (1 - limits.margin)
    # A CPU limit of 100 % is no CPU limit: it never breaches, so it cannot keep the model down either.
    busy = limits.cpu_percent < 100 and sample.other_cpu > limits.cpu_percent * (1 - limits.margin)
    stalled = sample.pressure.get("memory_full", 0.0) > MEMORY_PRESSURE * (1 - limits.margin)
    return not (hot or busy or stalled or sample.undervoltage)


def fits(sample: Sample, limits: Limits, current: Rung | None, bigger: Rung) -> bool:
    """Whether `bigger` can replace `current` and still leave the memory limit, with its margin, free."""
    extra = bigger.need - (current.need if current else 0)
    reserve = sample.memory_total * limits.memory_percent * (1 + limits.margin) / 100
    return sample.memory_available - extra >= reserve


class Policy:
    """The governor's state between samples: the rung it wants served, and the windows running."""

    def __init__(self) -> None:
        self.rungs: list[Rung] = []
        self.index = 0
        self.breach_since: dict[str, float] = {}  # each limit crossed without a break since
        self.calm_since: float | None = None
        self.last_change = float("-inf")
        self.warned = False

    @property
    def wanted(self) -> Rung | None:
        return self.rungs[self.index] if self.rungs else None

    def set_ladder(self, rungs: list[Rung], served: tuple | None = None) -> None:
        """A new ladder (models added or removed, the owner's choice changed): keep the rung if it is still
        on it, else start from the top (a limit still crossed steps down again).  A governor that starts
        (restarted, say, while the box is hot) takes the rung being served: it must not order a bigger model
        it has not measured the box for."""
        if [r.key() for r in rungs] == [r.key() for r in self.rungs]:
            self.rungs = rungs
            return
        keep = self.wanted.key() if self.wanted else served
        self.rungs = rungs
        self.index = next((i for i, r in enumerate(rungs) if r.key() == keep), 0)

    def decide(self, sample: Sample, limits: Limits, pinned: bool, served: tuple | None = None) -> Decision | None:
        """The decision `sample` brings, if any; `served` is the rung the assistant serves (its key), when
        known: until it is the rung wanted, nothing is judged."""
        t = sample.t
        if served is not None and self.wanted is not None and served != self.wanted.key():
            self.breach_since, self.calm_since = {}, None
            return None
        crossed = breaches(sample, limits)
        if crossed:
            self.calm_since = None
            names = {limit for limit, *_ in crossed}
            self.breach_since = {name: self.breach_since.get(name, t) for name in names}
            held = [c for c in crossed if t - self.breach_since[c[0]] >= limits.breach_seconds]
            if not held or t - self.last_change < limits.dwell_seconds:
                return None
            limit, value, threshold, reading = max(held, key=lambda c: t - self.breach_since[c[0]])
            window = t - self.breach_since[limit]
            self.breach_since = {}  # the next step needs a window of its own, on the new rung
            source = self.wanted
            if pinned or self.index + 1 >= len(self.rungs):
                if self.warned:
                    return None
                self.warned = True
                why = "the model is pinned" if pinned else "the model is on the lowest rung"
                return Decision(t, "warn", label(source), label(source), f"{reading} for {window:.0f} s; {why}",
                                limit, value, threshold, window)
            self.index += 1
            self.last_change = t
            return Decision(t, "down", label(source), label(self.wanted), f"{reading} for {window:.0f} s",
                            limit, value, threshold, window)
        self.breach_since = {}
        if not calm(sample, limits):
            self.calm_since = None
            return None
        self.warned = False
        self.calm_since = self.calm_since if self.calm_since is not None else t
        if pinned or self.index == 0 or t - self.calm_since < limits.calm_seconds \
                or t - self.last_change < limits.dwell_seconds:
            return None
        source, bigger = self.wanted, self.rungs[self.index - 1]
        if not fits(sample, limits, source, bigger):
            return None
        window = t - self.calm_since
        self.index -= 1
        self.last_change = t
        self.calm_since = None
        free = sample.memory_available / GIB
        return Decision(t, "up", label(source), label(bigger),
                        f"every limit safe for {window:.0f} s and {free:.1f} GiB available for "
                        f"{(bigger.need - source.need) / GIB:.2f} GiB more", "safe", sample.memory_percent,
                        limits.memory_percent, window)
