"""How fast a tier writes on this box, before it is downloaded: from the speed table measured on a build
machine (appliance/speed.yaml, written by `./build.py bench speed`: a stand-in of each tier's shape and
quantization, on 1 and 2 threads), scaled by the speed this box measured itself on the tier it serves.

A box's speed differs from the build machine's by its cores' speed and its memory's bandwidth, and both
scale a small model's decoding about as much as a large one's: the ratio the box measured on one tier
carries over to the others.  A box that has served no tier yet is given the build machine's numbers, and
told so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

TABLE = Path(__file__).with_name("speed.yaml")
THREADS = (1, 2)  # the thread counts the table is measured at; more threads are counted as 2
WORDS_PER_TOKEN = 0.75  # English prose, with these models' tokenizers
# Decoding below this is slower than a slow reader (about 4 words a second): a tier that is estimated
# slower is not the one a box is offered first.
FAST_ENOUGH = 5.0


class SpeedError(ValueError):
    """The speed table is unusable."""


@dataclass(frozen=True)
class Calibration:
    """What this box measured: decoding `tier` on `threads` threads at `tokens_per_second`."""
    tier: str
    threads: int
    tokens_per_second: float


@dataclass(frozen=True)
class Estimate:
    tokens_per_second: float
    here: bool  # scaled by this box's own measurement, not the build machine's number

    @property
    def words_per_second(self) -> float:
        return self.tokens_per_second * WORDS_PER_TOKEN

    def as_dict(self) -> dict:
        return {"tokens_per_second": round(self.tokens_per_second, 1),
                "words_per_second": round(self.words_per_second, 1), "here": self.here}


@dataclass(frozen=True)
class Table:
    machine: str
    decode: dict[str, tuple[float, ...]]  # tokens per second, per tier, at each of THREADS

    @classmethod
    def read(cls, path: Path = TABLE) -> Table:
        try:
            raw = yaml.safe_load(path.read_text())
            decode = {str(name): tuple(float(v) for v in speeds["decode"]) for name, speeds in raw["tiers"].items()}
            machine = str(raw["machine"])
        except (OSError, yaml.YAMLError, TypeError, ValueError, KeyError, AttributeError) as err:
            raise SpeedError(f"{path}: not a speed table ({err})") from None
        if any(len(v) != len(THREADS) or min(v) <= 0 for v in decode.values()):
            raise SpeedError(f"{path}: each tier needs a positive decode speed at {THREADS} threads")
        return cls(machine, decode)

    def measured(self, tier: str, threads: int) -> float | None:
        speeds = self.decode.get(tier)
        return speeds[min(max(threads, 1), len(THREADS)) - 1] if speeds else None

    def estimate(self, tier: str, threads: int, calibration: Calibration | None) -> Estimate | None:
        """Tokens a second `tier` writes on this box's `threads`; None when the table lacks it."""
        measured = self.measured(tier, threads)
        if measured is None:
            return None
        reference = self.measured(calibration.tier, calibration.threads) if calibration else None
        if reference is None:
            return Estimate(measured, False)
        return Estimate(measured * calibration.tokens_per_second / reference, True)
