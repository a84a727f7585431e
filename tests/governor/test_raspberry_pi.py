"""A Raspberry Pi as the governor sees it: its board, and the firmware's under-voltage alarm, read by the real
`Sensors` from a sensor tree the test writes."""

from __future__ import annotations

import dataclasses

import pytest

from appliance import config
from appliance.governor.policy import Limits, Policy, ladder
from appliance.governor.protocol import Model
from appliance.governor.sensors import Sensors
from tests.support.governing import SensorTree

pytestmark = pytest.mark.unit
GIB = 2**30
SETTINGS = config.parse({"governor": {"breach_seconds": 10, "calm_seconds": 60, "dwell_seconds": 30}}).governor


@pytest.fixture
def tree(tmp_path) -> SensorTree:
    return SensorTree(tmp_path / "sys")


def test_a_raspberry_pi_s_under_voltage_steps_down_and_its_board_keeps_cooler(tree):
    """raspberrypi-hwmon's `rpi_volt` alarm, as the kernel shows the firmware's throttling flags."""
    model = tree.root / "firmware/devicetree/base/model"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    alarm = tree.root / "class/hwmon/hwmon1/in0_lcrit_alarm"
    alarm.parent.mkdir(parents=True)
    tree.write(alarm.parent / "name", "rpi_volt")
    tree.write(alarm, "1")
    sensors = Sensors(tree.root, tree.root / "proc")
    assert sensors.board == "Raspberry Pi 5 Model B Rev 1.0"
    assert Limits.for_board(SETTINGS, 8 * GIB, 4, sensors.board).temperature == 75
    assert Limits.for_board(SETTINGS, 8 * GIB, 4, "").temperature == 80
    governing = Policy()
    governing.set_ladder(ladder([Model("big", 4 * GIB, 100_000), Model("small", GIB, 20_000)], "big", 4, 4096))
    limits = Limits.for_board(SETTINGS, 32 * GIB, 4, sensors.board)
    decisions = []
    for t in range(1000, 1200):
        if t == 1020:
            tree.write(alarm, "0")  # the supply recovered: calm again after its own window
        sample = dataclasses.replace(sensors.sample(float(t)), other_cpu=0.0, memory_available=16 * GIB,
                                     memory_total=32 * GIB, pressure={})
        assert sample.undervoltage == (t < 1020) and not sample.warnings
        decisions += filter(None, [governing.decide(sample, limits, pinned=False)])
    assert [(d.action, d.limit) for d in decisions] == [("down", "power"), ("up", "safe")]
    assert "under-voltage" in decisions[0].reason
    tree.write(alarm, "garbage")
    assert any("under-voltage alarm is unreadable" in w for w in sensors.sample(2000.0).warnings)
