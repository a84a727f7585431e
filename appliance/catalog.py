"""The model catalog: a ladder of real instruct models, small to large, each pinned by URL, size and SHA-256,
with what an owner weighs before a download (licence, memory at the box's context, tools) and the names
Ollama's library gives it, so that clients pull `qwen2.5:1.5b` as they would from Ollama.

Which tier a box is offered first (`recommend`) is decided here: the largest tier with tools whose memory
at the box's context is at most half the box's, so the rest of the box (the governor's reserve, the page
cache that keeps the weights readable, the service) keeps the other half, and that writes fast enough to
be read as it comes (appliance/speed.py's estimate, where there is one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import yaml

from .config import Config
from .speed import FAST_ENOUGH, Estimate

SHIPPED = Path(__file__).with_name("catalog.yaml")
# What the OS and the service take beside a model: a tier fits when its memory, this and the governor's
# reserve fit the box's memory.
HEADROOM = 512 * 2**20
SHARE = 2  # the recommended tier takes at most 1/SHARE of the box's memory
# The tool-call formats a tier may take (inference/tools.py's families, by name), or none.
TOOL_FORMATS = ("hermes", "llama3-json", "mistral", "generic", "none")


class CatalogError(ValueError):
    """The catalog file is unusable; the message names the tier and the field."""


@dataclass(frozen=True)
class Tier:
    name: str
    ollama: str  # its name in Ollama's library, with the tag: qwen2.5:1.5b
    file: str
    url: str
    size: int
    sha256: str
    licence: str
    context: int  # tokens it was trained for
    tools: str  # the tool-call format of its chat template; "none": it takes no tools
    layers: int  # its shape, as its GGUF header says: the KV cache it needs per token of context, and its speed
    kv_heads: int
    head_dim: int
    embedding: int
    heads: int
    feed_forward: int
    vocab: int

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * 2  # keys and values, f16

    def ram(self, context: int) -> int:
        """Memory it takes at `context` tokens (at most its own), as the governor counts a rung: file and cache."""
        return self.size + min(context, self.context) * self.kv_bytes_per_token

    @property
    def has_tools(self) -> bool:
        return self.tools != "none"


class Recommendation(NamedTuple):
    tier: Tier | None
    why: str


def _tier(entry: object, index: int) -> Tier:
    names = {f.name: f.type for f in dataclasses.fields(Tier)}
    if not isinstance(entry, dict) or entry.keys() != names.keys():
        have = sorted(entry) if isinstance(entry, dict) else entry
        raise CatalogError(f"tier {index + 1}: needs exactly the keys {', '.join(names)} (has {have})")
    for key, kind in names.items():
        if type(entry[key]).__name__ != kind:
            raise CatalogError(f"tier {index + 1} ({entry['name']}): {key}: {entry[key]!r} is not a {kind}")
    if entry["tools"] not in TOOL_FORMATS:
        raise CatalogError(f"tier {index + 1} ({entry['name']}): tools: {entry['tools']!r} is not one of "
                           f"{', '.join(TOOL_FORMATS)}")
    return Tier(**entry)


@dataclass(frozen=True)
class Catalog:
    """The ladder, smallest first, and `latest`: the tag Ollama's library serves for each bare name (which
    need not be a tier here: Ollama's `qwen2.5` is the 7B)."""
    tiers: tuple[Tier, ...]
    latest: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def read(cls, path: Path = SHIPPED) -> Catalog:
        try:
            raw = yaml.safe_load(path.read_text())
            entries, latest = list(raw["tiers"]), dict(raw.get("latest") or {})
        except (OSError, yaml.YAMLError, TypeError, ValueError, KeyError) as err:
            raise CatalogError(f"{path}: not a catalog ({err})") from None
        return cls(tuple(_tier(entry, i) for i, entry in enumerate(entries)), latest)

    def named(self, name: str) -> Tier | None:
        """The tier a client means: its name, its Ollama name, that with `:latest`, or a bare Ollama name
        (`llama3.2`: the tag Ollama's library serves for it, if this catalog has that one)."""
        wanted = _bare(name)
        wanted = self.latest.get(wanted, wanted)
        return next((t for t in self.tiers if wanted in (t.name, t.ollama.lower())), None)

    def with_file(self, file: str) -> Tier | None:
        """The tier whose file is named `file`: a copy of it from elsewhere must match its pin."""
        return next((t for t in self.tiers if t.file == file), None)

    def tier_of(self, path: str | Path | None) -> str | None:
        tier = self.with_file(Path(path).name) if path else None
        return tier.name if tier else None

    def names(self) -> str:
        """Its tiers' names (and Ollama's), for messages that say what exists."""
        return ", ".join(f"{t.name} ({t.ollama})" for t in self.tiers)

    def unknown(self, name: str) -> str:
        """Why `name` is no tier here, and what is."""
        bare = _bare(name)
        elsewhere = (f"; Ollama's '{bare}' is {self.latest[bare]}, which this catalog does not have"
                     if bare in self.latest else "")
        return f"'{name[:80]}' is not in this box's catalog{elsewhere}. Its tiers: {self.names()}"

    def recommend(self, memory_total: int, reserve_percent: int, context: int,
                  speed: Callable[[Tier], Estimate | None] = lambda tier: None) -> Recommendation:
        """The tier a new owner is offered first on a box with `memory_total` bytes, and why; `speed`, how
        fast each tier would write here (None: not known)."""
        fitting = [t for t in self.tiers if fits(t, memory_total, reserve_percent, context)]
        offered = [t for t in fitting if t.has_tools and t.ram(context) * SHARE <= memory_total]
        fast = [t for t in offered if (s := speed(t)) is None or s.tokens_per_second >= FAST_ENOUGH]
        if fast:
            best = max(fast, key=lambda t: t.size)
            return Recommendation(best, f"the largest model with tools whose memory at {context} tokens of context "
                                        f"({_gib(best.ram(context))}) is at most half of this box's "
                                        f"{_gib(memory_total)}: the rest of the box needs the other half"
                                        + _pace(speed(best)))
        if offered:
            best = min(offered, key=lambda t: t.size)
            return Recommendation(best, "the fastest model with tools; on this box even it is slower than reading"
                                        + _pace(speed(best)))
        if fitting:
            smallest = min(fitting, key=lambda t: t.size)
            return Recommendation(smallest, f"the smallest model: this box's {_gib(memory_total)} leave little room")
        return Recommendation(None, f"no model of the catalog fits this box's {_gib(memory_total)} of memory")


def fits(tier: Tier, memory_total: int, reserve_percent: int, context: int) -> bool:
    """Whether the tier, the headroom and the governor's reserve fit the box's memory."""
    return tier.ram(context) + HEADROOM + memory_total * reserve_percent // 100 <= memory_total


def _pace(estimate: Estimate | None) -> str:
    if estimate is None:
        return ""
    where = "here" if estimate.here else "on the machine the speed table was measured on"
    return f"; it should write about {estimate.words_per_second:.0f} words a second {where}"


def _bare(name: str) -> str:
    """A model's name as Ollama compares it: without case, and `:latest` the same as no tag."""
    return name.strip().lower().removesuffix(":latest")


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def of(config: Config) -> Catalog:
    """The catalog this box offers: `paths.catalog`, else the one shipped."""
    return Catalog.read(Path(config.paths.catalog) if config.paths.catalog else SHIPPED)
