"""What the governor reads once a second: CPU, memory, pressure stall information, temperatures and, on a
Raspberry Pi, the firmware's under-voltage alarm.

psutil gives CPU times, frequencies and memory; pressure comes from `<proc>/pressure/*` (kernels with
PSI), temperatures from `<sys>/class/thermal` and `<sys>/class/hwmon`, under-voltage from the hwmon the
kernel's raspberrypi-hwmon driver makes of the firmware's throttling flags (`rpi_volt`: `in0_lcrit_alarm`);
the firmware's own slowing of the CPU for heat or power shows in the cores' frequencies.  The roots are
arguments so tests can hand the governor a sensor tree of their own.  A sensor that is missing, unreadable or
reads garbage never stops a sample: its value is None and the sample carries a warning naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Millidegrees, as the kernel reports them; a reading outside these bounds is a broken sensor, not heat.
SANE_MILLI_C = (-40_000, 150_000)
MAX_SENSORS = 64
PSI = re.compile(rb"^(some|full) avg10=([0-9.]+) ")


@dataclass(frozen=True)
class Sample:
    t: float  # wall clock, seconds since the epoch
    cpu: float  # percent of all cores busy since the last sample
    other_cpu: float  # the part of it not spent by the assistant (what the limit counts)
    cores: int
    mhz: tuple[int, ...]  # each core's current frequency, where the kernel reports them (throttling shows here)
    memory_available: int
    memory_total: int
    swap_percent: float
    pressure: dict = field(default_factory=dict)  # "cpu_some", "memory_full", ... avg10 in percent
    temperature: float | None = None  # the hottest sensor, degrees Celsius
    undervoltage: bool | None = None  # a Raspberry Pi's power supply sagging now; None where no board says
    warnings: tuple[str, ...] = ()

    @property
    def memory_percent(self) -> float:
        return 100 * self.memory_available / self.memory_total if self.memory_total else 100.0

    def as_dict(self) -> dict:
        return self.__dict__ | {"pressure": dict(self.pressure), "warnings": list(self.warnings), "mhz": list(self.mhz)}


def _read(path: Path, limit: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def pressure(proc: Path) -> tuple[dict, list[str]]:
    """avg10 of every line of /proc/pressure/{cpu,memory,io}; none where the kernel has no PSI."""
    values, warnings = {}, []
    root = proc / "pressure"
    if not root.is_dir():
        return values, warnings
    for resource in ("cpu", "memory", "io"):
        try:
            lines = _read(root / resource).splitlines()
        except OSError:
            continue
        for line in lines:
            match = PSI.match(line)
            if match and float(match[2]) <= 100:
                values[f"{resource}_{match[1].decode()}"] = float(match[2])
            else:
                warnings.append(f"{root / resource}: unreadable line {line[:40]!r}")
    return values, warnings


def _temperature_files(sys: Path) -> list[Path]:
    zones = sorted((sys / "class/thermal").glob("thermal_zone*/temp"))
    hwmon = sorted((sys / "class/hwmon").glob("hwmon*/temp*_input"))
    return (zones + hwmon)[:MAX_SENSORS]


def temperature(files: list[Path]) -> tuple[float | None, list[str]]:
    """The hottest sane reading of these thermal zone and hwmon sensor files, in degrees Celsius."""
    hottest, warnings = None, []
    for path in files:
        try:
            milli = int(_read(path, 32).strip())
        except (OSError, ValueError):
            warnings.append(f"{path}: not a temperature")
            continue
        if not SANE_MILLI_C[0] <= milli <= SANE_MILLI_C[1]:
            warnings.append(f"{path}: {milli / 1000:.1f} °C is not a plausible temperature")
            continue
        hottest = max(hottest if hottest is not None else -273.0, milli / 1000)
    return hottest, warnings


def undervoltage(sys: Path) -> tuple[bool | None, list[str]]:
    """Whether a Raspberry Pi's firmware reports under-voltage now (it then slows the CPU); None elsewhere."""
    for name in sorted((sys / "class/hwmon").glob("hwmon*/name"))[:MAX_SENSORS]:
        try:
            if _read(name, 64).strip() != b"rpi_volt":
                continue
            alarm = name.parent / "in0_lcrit_alarm"
            return int(_read(alarm, 8).strip()) == 1, []
        except (OSError, ValueError):
            return None, [f"{name.parent}: the under-voltage alarm is unreadable"]
    return None, []


def board(sys: Path) -> str:
    """The board's model when it is a Raspberry Pi (the device tree's, e.g. "Raspberry Pi 5 Model B Rev 1.0"),
    else ''."""
    try:
        model = _read(sys / "firmware/devicetree/base/model", 128).rstrip(b"\0").decode(errors="replace")
    except OSError:
        return ""
    return model if model.startswith("Raspberry Pi") and model.isprintable() else ""


class Sensors:
    """Successive samples: CPU shares are measured between two of them."""

    def __init__(self, sys: Path = Path("/sys"), proc: Path = Path("/proc")):
        self.sys, self.proc = Path(sys), Path(proc)
        self.cores = psutil.cpu_count() or 1
        self._last = psutil.cpu_times()
        self._seen: set[Path] = set()  # every temperature sensor seen since the start (at most MAX_SENSORS)
        self.board = board(self.sys)

    def sample(self, t: float, assistant_cpu_seconds: float = 0.0, interval: float = 1.0) -> Sample:
        """A sample now; `assistant_cpu_seconds` is what the assistant used since the last one (its report)."""
        warnings: list[str] = []
        times = psutil.cpu_times()
        busy, total = _busy(self._last, times)
        self._last = times
        cpu = 100 * busy / total if total > 0 else 0.0
        own = 100 * assistant_cpu_seconds / (interval * self.cores) if interval > 0 else 0.0
        freqs = tuple(round(f.current) for f in (psutil.cpu_freq(percpu=True) or []) if f.current)
        memory = psutil.virtual_memory()
        psi, problems = pressure(self.proc)
        warnings += problems
        files = _temperature_files(self.sys)
        hottest, problems = temperature(files)
        warnings += problems
        # One sensor of several gone (a hot chip unbound, say) leaves the others' cool readings: not calm.
        warnings += [f"{path}: the sensor is gone" for path in sorted(self._seen.difference(files))]
        if len(self._seen) < MAX_SENSORS:
            self._seen.update(files[:MAX_SENSORS - len(self._seen)])
        sagging, problems = undervoltage(self.sys)
        warnings += problems
        return Sample(t=t, cpu=round(cpu, 1), other_cpu=round(max(0.0, cpu - own), 1), cores=self.cores,
                      mhz=freqs,
                      memory_available=memory.available, memory_total=memory.total,
                      swap_percent=psutil.swap_memory().percent, pressure=psi, temperature=hottest,
                      undervoltage=sagging, warnings=tuple(warnings))


def _busy(before, after) -> tuple[float, float]:
    """Busy and total CPU seconds between two psutil.cpu_times() (idle and iowait are not busy)."""
    deltas = {name: getattr(after, name) - getattr(before, name) for name in after._fields}
    total = sum(value for name, value in deltas.items() if name not in ("guest", "guest_nice"))
    idle = deltas.get("idle", 0) + deltas.get("iowait", 0)
    return total - idle, total
