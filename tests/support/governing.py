"""The real governor (`paladin-governor run`) as a child process with a sensor tree the test writes,
beside a real service that reports to it, for the governor's service, browser and benchmark runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from buildhost import CACHE, tinymodel
from tests.support.served import UNLIMITED, Service
from appliance.layout import DataDir

GOVERNOR = Path(sys.executable).parent / "paladin-governor"
COOL, HOT = 45.0, 90.0
# Windows short enough for a test to see several steps; the policy is the same at any scale.
FAST = {"breach_seconds": 2, "calm_seconds": 4, "dwell_seconds": 2}


class SensorTree:
    """A /sys of one thermal zone and one hwmon sensor whose readings the test sets."""

    def __init__(self, root: Path):
        self.root = root
        self.zone = root / "class/thermal/thermal_zone0/temp"
        self.hwmon = root / "class/hwmon/hwmon0/temp1_input"
        for path in (self.zone, self.hwmon):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.set(COOL)

    def set(self, celsius: float, hwmon: float | None = None) -> None:
        self.write(self.zone, str(int(celsius * 1000)))
        self.write(self.hwmon, str(int((hwmon if hwmon is not None else celsius - 5) * 1000)))

    @staticmethod
    def write(path: Path, text: str) -> None:
        partial = path.with_suffix(".partial")
        partial.write_text(text + "\n")
        partial.rename(path)  # the governor never reads half a value


class GovernorProcess:
    def __init__(self, directory: Path, sensors: SensorTree, interval: float = 0.25):
        self.socket = directory / "governor.sock"
        self.state = directory / "governor-state"
        self.state.mkdir(exist_ok=True)
        self.log = (directory / "governor.log").open("w+")
        self.process = subprocess.Popen(
            [GOVERNOR, "run", "--state", self.state, "--socket", self.socket, "--sys", sensors.root,
             "--interval", str(interval)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the governor did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def ladder_models(directory: Path, sizes=("small", "medium")) -> dict[str, Path]:
    """Generated models of the given sizes in the store `directory`, by size."""
    directory.mkdir(parents=True, exist_ok=True)
    # Made once per version of the generator: the large one takes a while.
    version = hashlib.sha256(Path(tinymodel.__file__).read_bytes()).hexdigest()[:12]
    models = {}
    for size in sizes:
        made = CACHE / "models" / f"governor-{size}-{version}.gguf"
        if not made.exists():
            made.parent.mkdir(parents=True, exist_ok=True)
            tinymodel.write(made, size, name=f"paladin-{size}")
        models[size] = directory / f"{size}.gguf"
        try:
            os.link(made, models[size])  # the large one is 700 MB: no copy where a link will do
        except OSError:
            shutil.copy(made, models[size])
    return models


class Governed:
    """A governor with its sensor tree and a service reporting to it, serving `top` from a store of `sizes`."""

    def __init__(self, directory: Path, sizes=("small", "medium"), top: str = "medium", governor: dict | None = None,
                 interval: float = 0.25, inference: dict | None = None):
        data = directory / "data"
        self.models = ladder_models(DataDir(data).models, sizes)
        self.sensors = SensorTree(directory / "sys")
        self.governor = GovernorProcess(directory, self.sensors, interval)
        settings = {**UNLIMITED, "governor": FAST | (governor or {}),
                    "inference": {"model": f"{top}.gguf", "context_tokens": 1024} | (inference or {})}
        self.service = Service(None, data, {"WATCHDOG_USEC": "2000000"}, settings,
                               system={"paths": {"governor_socket": str(self.governor.socket)}})

    def health(self) -> dict:
        with self.service.client() as client:
            return client.get("/health").json()

    def wait_for(self, predicate, timeout: float = 60, what: str = "the governor") -> dict:
        """The first /health that `predicate` accepts, polled every 0.2 s."""
        deadline = time.monotonic() + timeout
        health = {}
        while time.monotonic() < deadline:
            health = self.health()
            if predicate(health):
                return health
            time.sleep(0.2)
        raise AssertionError(f"{what}: not reached in {timeout} s; last /health: {health}\n"
                             f"{self.governor.output()[-2000:]}\n{self.service.output()[-2000:]}")

    def stop(self) -> None:
        self.service.stop()
        self.governor.stop()

