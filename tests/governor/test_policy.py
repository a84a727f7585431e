"""The governor's sensors, policy and history on a sensor tree the test writes (milliseconds per test).

Samples are read by the real `Sensors` from the tree (and psutil); the test only chooses the clock, so a
10-second window takes no time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import struct
from pathlib import Path

import pytest

from appliance import config
from appliance.governor import daemon, history as history_module
from appliance.governor.daemon import Governor, settings_of
from appliance.governor.history import History
from appliance.governor.policy import Limits, Policy, ladder
from appliance.governor.protocol import (Answer, HistoryQuery, MessageError, Model, Report, Rung, encode, read_reply,
                                         read_request)
from appliance.governor.sensors import Sensors, pressure
from appliance.layout import GovernorState
from appliance.inference import gguf
from buildhost import tinymodel
from tests.support.governing import SensorTree

pytestmark = pytest.mark.unit
GIB = 2**30
SETTINGS = config.parse({"governor": {"breach_seconds": 10, "calm_seconds": 60, "dwell_seconds": 30}}).governor
MODELS = [Model("big", 4 * GIB, 100_000), Model("mid", 2 * GIB, 50_000), Model("small", GIB // 2, 20_000)]


@pytest.fixture
def tree(tmp_path) -> SensorTree:
    return SensorTree(tmp_path / "sys")


def run(tree: SensorTree, celsius: list[float], start: float = 1000.0, governing: Policy | None = None):
    """Feed one sample a second at the given temperatures; the decisions taken, and the policy."""
    sensors = Sensors(tree.root, tree.root / "proc")
    governing = governing or Policy()
    if not governing.rungs:
        governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    decisions = []
    for second, value in enumerate(celsius):
        tree.set(value)
        sample = dataclasses.replace(sensors.sample(start + second), other_cpu=0.0, memory_available=16 * GIB,
                                     memory_total=32 * GIB, pressure={})
        limits = Limits.for_board(SETTINGS, sample.memory_total, 4)
        decision = governing.decide(sample, limits, pinned=False)
        if decision:
            decisions.append(decision)
    return decisions, governing


def test_the_ladder_runs_from_the_owners_model_down_with_graded_rungs():
    rungs = ladder(MODELS, "mid", 4, 4096)
    assert [r.key() for r in rungs] == [("mid", 4, 4096), ("mid", 2, 2048), ("small", 4, 4096), ("small", 2, 2048)]
    assert rungs[0].need == 2 * GIB + 4096 * 50_000 and rungs[1].need < rungs[0].need
    assert [r.key() for r in ladder(MODELS, "small", 1, 512)] == [("small", 1, 512)]  # nothing to grade
    assert ladder(MODELS, "gone", 4, 4096) == []


def test_heat_for_the_window_steps_down_and_calm_for_the_longer_window_steps_up(tree):
    decisions, governing = run(tree, [85.0] * 10)
    assert decisions == []  # 9 seconds of heat: not yet
    decisions, governing = run(tree, [85.0] * 11)
    assert [(d.action, d.limit, d.target) for d in decisions] == [("down", "temperature", "big (2 threads, 2048 context)")]
    assert decisions[0].window == 10 and "85.0 °C ≥ 80 °C for 10 s" in decisions[0].reason
    assert governing.index == 1
    # Just under the limit is not calm (the margin): nothing moves, however long.
    decisions, _ = run(tree, [75.0] * 200, start=2000, governing=governing)
    assert decisions == [] and governing.index == 1
    # 68 °C is 15 % back from 80: after 60 s of it, one step up.
    decisions, _ = run(tree, [60.0] * 61, start=3000, governing=governing)
    assert [(d.action, d.target) for d in decisions] == [("up", "big (4 threads, 4096 context)")]
    assert governing.index == 0


def test_lasting_heat_walks_down_one_rung_per_window_and_warns_once_at_the_bottom(tree):
    decisions, governing = run(tree, [90.0] * 200)
    assert [d.action for d in decisions] == ["down"] * 5 + ["warn"]
    assert governing.index == 5 and "lowest rung" in decisions[-1].reason
    times = [d.t for d in decisions[:5]]
    # The dwell (30 s) spaces the steps, each after a window (10 s) of its own.
    assert all(b - a >= 30 for a, b in zip(times, times[1:]))


def test_oscillating_values_never_move_the_model(tree):
    wave = ([85.0] * 6 + [60.0] * 6) * 40  # over the limit for 6 s, under it for 6 s, for 8 minutes
    decisions, governing = run(tree, wave)
    assert decisions == [] and governing.index == 0
    # After a step down, hot and cold minutes in turn: the calm window never completes, so no step up.
    decisions, governing = run(tree, [90.0] * 11 + ([60.0] * 50 + [90.0] * 5) * 6, start=5000)
    assert [d.action for d in decisions] == ["down"] and governing.index == 1


def test_a_garbage_or_vanished_sensor_warns_and_moves_nothing(tree):
    sensors = Sensors(tree.root, tree.root / "proc")
    assert sensors.sample(1.0).temperature == 45.0
    tree.write(tree.zone, "hot")
    tree.write(tree.hwmon, "999999999")
    sample = sensors.sample(2.0)
    assert sample.temperature is None
    assert any("thermal_zone0/temp: not a temperature" in w for w in sample.warnings)
    assert any("1000000.0 °C is not a plausible temperature" in w for w in sample.warnings)
    tree.zone.unlink()
    tree.hwmon.unlink()
    assert {w for w in sensors.sample(3.0).warnings if "the sensor is gone" in w} == {
        f"{tree.zone}: the sensor is gone", f"{tree.hwmon}: the sensor is gone"}
    # A broken sensor is not heat (no step down) and not known calm (no step up).
    stays_a_rung_down(sensors)


def stays_a_rung_down(sensors: Sensors, each=lambda sample: None) -> None:
    """Five minutes of `sensors`' samples, the rest of the box calm, one rung down: no decision at all;
    `each` checks every sample."""
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    governing.index = 1
    limits = Limits.for_board(SETTINGS, 32 * GIB, 4)
    for t in range(1000, 1300):
        sample = dataclasses.replace(sensors.sample(float(t)), other_cpu=0.0, memory_available=16 * GIB,
                                     memory_total=32 * GIB, pressure={})
        each(sample)
        assert governing.decide(sample, limits, pinned=False) is None
    assert governing.index == 1


def test_one_sensor_of_several_gone_warns_and_keeps_the_model_down(tree):
    """The hot chip's driver unbound: the cool zone alone would read as calm."""
    sensors = Sensors(tree.root, tree.root / "proc")
    tree.set(45.0, hwmon=90.0)
    assert sensors.sample(1.0).temperature == 90.0
    tree.hwmon.unlink()

    def only_the_cool_zone_and_a_warning(sample) -> None:
        assert sample.temperature == 45.0 and sample.warnings == (f"{tree.hwmon}: the sensor is gone",)

    stays_a_rung_down(sensors, only_the_cool_zone_and_a_warning)


def calm_box(t: float, **change):
    sample = Sensors().sample(t)
    return dataclasses.replace(sample, t=t, temperature=45.0, other_cpu=0.0, warnings=(), pressure={},
                               memory_total=32 * GIB, memory_available=16 * GIB) if not change else \
        dataclasses.replace(calm_box(t), **change)


def test_a_cpu_limit_of_100_neither_steps_down_nor_keeps_the_model_down():
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    governing.index = 1
    limits = dataclasses.replace(Limits.for_board(SETTINGS, 32 * GIB, 4), cpu_percent=100)
    decisions = [governing.decide(calm_box(float(t), other_cpu=99.0), limits, pinned=False) for t in range(200)]
    assert [d.action for d in decisions if d] == ["up"] and governing.index == 0


def test_limits_crossed_in_turn_each_keep_a_window_of_their_own():
    """Heat for 2 s, then short memory for 2 s, over and over: neither limit holds for the 10 s window, so
    nothing steps; heat that does hold is named with the time it really held."""
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    limits = Limits.for_board(SETTINGS, 32 * GIB, 4)
    hot, short = {"temperature": 90.0}, {"memory_available": GIB}
    turns = [governing.decide(calm_box(float(t), **(hot if t % 4 < 2 else short)), limits, False) for t in range(120)]
    assert [d for d in turns if d] == [] and governing.index == 0
    held = [governing.decide(calm_box(float(t), **hot), limits, False) for t in range(200, 215)]
    step = next(d for d in held if d)
    assert step.limit == "temperature" and step.window == 10 and step.reason.endswith("for 10 s")


def test_while_the_swap_waits_no_window_runs_and_steps_are_judged_on_the_rung_served():
    """A long reply holds the big model after a step down: the heat that goes on is not yet the new rung's,
    and piles up no decisions; once the smaller rung serves, its own window begins."""
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    limits = Limits.for_board(SETTINGS, 32 * GIB, 4)
    top = governing.wanted.key()
    hot = [governing.decide(calm_box(float(t), temperature=90.0), limits, False, served=top) for t in range(11)]
    assert [d.action for d in hot if d] == ["down"] and governing.index == 1
    waiting = [governing.decide(calm_box(float(t), temperature=90.0), limits, False, served=top)
               for t in range(11, 100)]
    assert [d for d in waiting if d] == [] and governing.index == 1
    swapped = governing.wanted.key()
    after = [governing.decide(calm_box(float(t), temperature=90.0), limits, False, served=swapped)
             for t in range(100, 111)]
    step = next(d for d in after if d)
    assert step.action == "down" and step.t == 110 and step.source == "big (2 threads, 2048 context)"


def test_memory_short_steps_down_and_a_bigger_model_must_fit_to_step_up(tree):
    sensors = Sensors(tree.root, tree.root / "proc")
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    limits = Limits.for_board(SETTINGS, 32 * GIB, 4)
    assert limits.memory_percent == 10
    base = dataclasses.replace(sensors.sample(0.0), other_cpu=0.0, memory_total=32 * GIB, pressure={}, warnings=())
    short = [governing.decide(dataclasses.replace(base, t=float(t), memory_available=2 * GIB), limits, False)
             for t in range(11)]
    assert [d.limit for d in short if d] == ["memory"] and governing.index == 1
    # Plenty of calm, but the bigger rung's extra memory would eat into the reserve: no step up.
    rung, bigger = governing.rungs[1], governing.rungs[0]
    tight = int(32 * GIB * 0.10 * 1.15) + (bigger.need - rung.need) - 1
    assert not any(governing.decide(dataclasses.replace(base, t=float(t), memory_available=tight), limits, False)
                   for t in range(100, 400))
    up = [governing.decide(dataclasses.replace(base, t=float(t), memory_available=tight + 2), limits, False)
          for t in range(400, 470)]
    assert [d.action for d in up if d] == ["up"] and governing.index == 0
    # All tasks stalled on memory (PSI) is a breach even with memory available.
    stalled = [governing.decide(dataclasses.replace(base, t=float(t), memory_available=16 * GIB,
                                                    pressure={"memory_full": 25.0}), limits, False)
               for t in range(1000, 1011)]
    assert [d.reason for d in stalled if d] == ["all tasks stalled on memory 25 % of the time ≥ 10 % for 10 s"]


def test_a_pinned_model_only_warns():
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096))
    sample = Sensors().sample(0.0)
    limits = Limits.for_board(SETTINGS, sample.memory_total, 4)
    hot = dataclasses.replace(sample, temperature=95.0, other_cpu=0.0, warnings=(), pressure={},
                              memory_available=sample.memory_total)
    decisions = [governing.decide(dataclasses.replace(hot, t=float(t)), limits, pinned=True) for t in range(100)]
    assert [d.action for d in decisions if d] == ["warn"] and governing.index == 0
    assert "pinned" in next(d for d in decisions if d).reason


def test_board_defaults_and_the_owners_limits():
    small = Limits.for_board(config.GovernorConfig(), 4 * GIB, 4)
    large = Limits.for_board(config.GovernorConfig(), 64 * GIB, 16)
    assert (small.temperature, small.cpu_percent, small.memory_percent) == (80, 60, 15)
    assert (large.cpu_percent, large.memory_percent) == (75, 10)
    owner = Limits.for_board(config.parse({"governor": {"temperature": 70, "cpu_percent": 40}}).governor, 4 * GIB, 4)
    assert (owner.temperature, owner.cpu_percent) == (70, 40)
    with pytest.raises(config.ConfigError, match="governor.temperature: 500 is out of range"):
        config.parse({"governor": {"temperature": 500}})


def test_pressure_is_read_where_the_kernel_has_it(tmp_path):
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure/memory").write_text("some avg10=3.50 avg60=1.00 avg300=0.10 total=1\n"
                                              "full avg10=1.25 avg60=0.00 avg300=0.00 total=1\n")
    (tmp_path / "pressure/cpu").write_text("some avg10=x\n")
    values, warnings = pressure(tmp_path)
    assert values == {"memory_some": 3.5, "memory_full": 1.25}
    assert warnings == [f"{tmp_path}/pressure/cpu: unreadable line b'some avg10=x'"]
    assert pressure(tmp_path / "nothing") == ({}, [])


def test_history_keeps_its_bounds_across_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "KEEP_SAMPLES", 50)
    kept = History(tmp_path / "h.sqlite")
    for t in range(120):
        kept.add_sample({"t": float(t)})
    kept.add_decision({"t": 0.0, "action": "down"})
    kept.add_decision({"t": 8 * 86400.0, "action": "up"})  # a week later: the first one goes
    kept.close()
    again = History(tmp_path / "h.sqlite")
    assert [s["t"] for s in again.samples] == [float(t) for t in range(70, 120)]
    assert [d["action"] for d in again.decisions()] == ["up"]
    assert again.db.execute("SELECT count(*) FROM samples").fetchone()[0] == 50


REPORT = {"models": [{"id": "m", "bytes": 10, "kv_bytes_per_token": 2}], "chosen": "m", "pinned": False,
          "threads": 2, "context": 512, "served": None, "cpu_seconds": 1.5, "tokens_per_second": 0,
          "settings": {}}


@pytest.mark.parametrize("change, message", [
    ({"models": "x"}, "report.models must be a list"),
    ({"models": [{"id": "m", "bytes": -1, "kv_bytes_per_token": 2}]}, "report.bytes is out of range"),
    ({"models": [{}] * 65}, "at most 64"),
    ({"threads": True}, "report.threads must be int"),
    ({"served": {}}, "report.model must be str"),  # an empty object is no rung, not "nothing served"
    ({"chosen": "x" * 300}, "too long"),
    ({"settings": {"temperature": "hot"}}, "governor.temperature: 'hot' is not an integer"),
    ({"settings": {"socket": "/etc"}}, "governor.socket: unknown key"),
])
def test_a_bad_report_is_refused_by_name(change, message):
    with pytest.raises(MessageError, match=message):
        settings_of(Report.read(REPORT | change))


def test_every_message_reads_back_as_it_was_sent():
    """Both ends share one codec: what the assistant writes is what the governor reads, and back."""
    report = Report.read(REPORT | {"served": {"model": "m", "threads": 2, "context": 512},
                                   "settings": {"pin": "m", "enabled": True}})
    assert read_request(encode(report)) == report
    assert report.models == (Model("m", 10, 2),) and report.served == ("m", 2, 512)
    assert read_request(encode(HistoryQuery(12.5))) == HistoryQuery(12.5)
    answer = Answer(Rung("m", 2, 512, 1034), {"index": 0})
    assert Answer.read(read_reply(encode(answer))) == answer
    assert Answer.read({"rung": None, "status": {}}) == Answer(None, {})
    with pytest.raises(MessageError, match="the governor answered: not allowed"):
        read_reply(encode({"error": "not allowed"}))
    with pytest.raises(MessageError, match="no status"):
        Answer.read({"rung": None})
    with pytest.raises(MessageError, match="rung.threads is out of range"):
        Answer.read({"rung": {"model": "m", "threads": 0, "context": 512, "need": 1}, "status": {}})
    with pytest.raises(MessageError, match="one key: report or history"):
        read_request(b'{"report": {}, "history": {}}\n')
    with pytest.raises(MessageError, match="history.since must be a number"):
        read_request(b'{"history": {"since": "now"}}\n')


def test_the_socket_answers_reports_and_refuses_garbage_and_strangers(tmp_path, tree, monkeypatch):
    asyncio.run(_socket(tmp_path, tree, monkeypatch))


async def _socket(tmp_path, tree, monkeypatch):
    governor = Governor(GovernorState(tmp_path), Sensors(tree.root, tmp_path), interval=0.05)
    path = tmp_path / "s"
    server = asyncio.create_task(governor.serve(path, daemon.allowed_uids([])))
    while not path.exists():
        await asyncio.sleep(0.01)

    async def say(line: bytes) -> dict:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(line)
        reply = json.loads(await reader.readline())
        writer.close()
        return reply

    reply = await say(json.dumps({"report": REPORT}).encode() + b"\n")
    assert reply["rung"] == {"model": "m", "threads": 2, "context": 512, "need": 1034}
    assert (await say(b"[1,2]\n"))["error"].startswith("a message is an object")
    assert "error" in await say(b'{"report": {"models": []}}\n')
    assert await say(b"[" * 30000 + b"]" * 30000 + b"\n") == {"error": "the message is nested too deeply"}
    await asyncio.sleep(0.2)
    history = await say(b'{"history": {"since": 0}}\n')
    assert history["samples"] and history["samples"][-1]["rung"] == 0
    monkeypatch.setattr(daemon, "peer_uid", lambda writer: 4242)
    assert await say(b"{}\n") == {"error": "not allowed"}
    server.cancel()


def test_kv_cache_size_comes_from_the_header(tmp_path):
    made = tinymodel.write(tmp_path / "m.gguf", "small")
    shape = tinymodel.SIZES["small"]
    assert gguf.kv_bytes_per_token(made) == shape.layers * 2 * shape.embedding * 2  # no GQA in the generated ones
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 10**9))
    with pytest.raises(gguf.HeaderError, match="header keys"):
        gguf.kv_bytes_per_token(tmp_path / "bad.gguf")
    (tmp_path / "short.gguf").write_bytes(made.read_bytes()[:200])
    with pytest.raises(gguf.HeaderError):
        gguf.kv_bytes_per_token(tmp_path / "short.gguf")
    with pytest.raises(gguf.HeaderError, match="not a GGUF"):
        gguf.kv_bytes_per_token(Path(__file__))


def test_peer_credentials_are_the_connecting_process():
    a, b = socket.socketpair(socket.AF_UNIX)

    class Writer:
        def get_extra_info(self, name):
            return a
    assert daemon.peer_uid(Writer()) == os.getuid()
    a.close()
    b.close()


def test_a_fresh_governor_takes_the_served_rung_and_a_changed_ladder_keeps_it():
    governing = Policy()
    governing.set_ladder(ladder(MODELS, "big", 4, 4096), served=("mid", 4, 4096))
    assert governing.wanted.key() == ("mid", 4, 4096)  # restarted while the box was hot: no order to go up
    governing.set_ladder(ladder(MODELS + [Model("tiny", GIB // 8, 1000)], "big", 4, 4096), served=("big", 4, 4096))
    assert governing.wanted.key() == ("mid", 4, 4096)  # a model was added: the rung stays
    governing.set_ladder(ladder(MODELS, "small", 4, 4096), served=("small", 4, 4096))
    assert governing.index == 0  # the owner chose another model: its top


def test_the_assistants_cpu_is_a_rate_spread_over_every_sample(tmp_path, tree):
    """It reports every 2 s, the governor samples every second: each sample carries its share, not a lump."""
    governor = Governor(GovernorState(tmp_path), Sensors(tree.root, tmp_path), interval=1.0)
    governor.take_report(Report.read(REPORT | {"cpu_seconds": 10.0}))
    governor.reported_at -= 2.0  # as if the first report came 2 s ago
    governor.take_report(Report.read(REPORT | {"cpu_seconds": 11.0}))
    assert governor.assistant_rate == pytest.approx(0.5, rel=0.05)
