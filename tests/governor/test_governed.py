"""The real governor beside the real service, on generated models of three sizes: heat from a sensor tree,
real CPU burners, a real memory hog, and 20 streams across a swap.

The governor's windows are short here (governing.FAST: 2 s to step down, 4 s of calm to step up); the
deadlines are generous, because a step's time is a benchmark's to measure (tests/bench/governor.py)."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.governing import HOT, COOL, Governed

pytestmark = pytest.mark.service
GIB = 2**30


@pytest.fixture(scope="module")
def governed(tmp_path_factory):
    # The 20-stream test queues 20 requests at once.  No CPU limit but in the burners' test: whatever else
    # runs on the machine must not move the model in the others.
    running = Governed(tmp_path_factory.mktemp("governed"), sizes=("small", "medium", "large"), top="large",
                       governor={"calm_seconds": 3, "cpu_percent": 100},
                       inference={"context_tokens": 1024, "queue_size": 32})
    yield running
    running.stop()


def at_full_strength(h: dict) -> bool:
    governor = h.get("governor") or {}
    rung = governor.get("rung") or {}
    return governor.get("index") == 0 and (h.get("model"), h.get("threads")) == (rung.get("model"), rung.get("threads"))


@pytest.fixture
def at_top(governed):
    """Cool sensors and the owner's model at full strength before the test."""
    governed.sensors.set(COOL)
    governed.wait_for(at_full_strength, timeout=120, what="back at the top rung")
    return governed


def decisions(governed, since: float) -> list[dict]:
    with governed.service.client() as client:
        return client.get("/governor/history", params={"since": since}).json()["decisions"]


def test_heat_steps_down_and_calm_steps_back_up(at_top):
    governed, since = at_top, time.time()
    top = governed.health()
    governed.sensors.set(HOT)
    down = governed.wait_for(lambda h: h["status"] == "ok" and (h["model"], h["threads"], h["context_tokens"]) !=
                             (top["model"], top["threads"], top["context_tokens"]), timeout=60, what="a step down")
    assert down["governor"]["index"] >= 1
    governed.sensors.set(COOL)
    governed.wait_for(at_full_strength, timeout=120, what="back up")
    made = decisions(governed, since)
    assert made[0]["action"] == "down" and made[0]["limit"] == "temperature" and made[0]["value"] == HOT
    assert made[0]["window"] >= 2 and "°C ≥ 80 °C" in made[0]["reason"]
    assert made[-1]["action"] == "up" and made[-1]["limit"] == "safe"
    with governed.service.client() as client:
        metrics = client.get("/metrics").text
        state = client.get("/governor").json()
    assert "paladin_governor_connected 1.0" in metrics and "paladin_governor_rung 0.0" in metrics
    assert 'paladin_governor_last_decision_timestamp_seconds{action="up"}' in metrics
    assert [r["model"] for r in state["ladder"]] == ["large", "large", "medium", "medium", "small", "small"]


def test_oscillating_heat_never_swaps(at_top):
    governed, since = at_top, time.time()
    before = governed.health()
    for _ in range(8):  # over the limit for 1 s, under it for 1 s: never the 2-second window
        governed.sensors.set(HOT)
        time.sleep(1)
        governed.sensors.set(COOL)
        time.sleep(1)
    after = governed.health()
    assert (after["model"], after["threads"]) == (before["model"], before["threads"])
    assert decisions(governed, since) == []


def test_a_broken_sensor_warns_and_swaps_nothing(at_top):
    governed, since = at_top, time.time()
    before = governed.health()
    governed.sensors.write(governed.sensors.zone, "garbage")
    warned = governed.wait_for(lambda h: any("not a temperature" in w for w in h["governor"]["warnings"]),
                               timeout=30, what="a warning")
    time.sleep(5)
    governed.sensors.zone.unlink()
    governed.sensors.hwmon.unlink()
    time.sleep(3)
    after = governed.health()
    assert governed.governor.process.poll() is None
    assert (after["model"], after["threads"]) == (before["model"], before["threads"]) == (warned["model"],
                                                                                         warned["threads"])
    assert decisions(governed, since) == []
    assert "thermal_zone0/temp: not a temperature" in governed.governor.output()
    governed.sensors.set(COOL)


def test_cpu_burners_step_down(at_top):
    governed, since = at_top, time.time()
    top = governed.health()
    with governed.service.client() as client:
        assert client.put("/governor/settings", json={"cpu_percent": 60}).status_code == 200
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(psutil.cpu_count())]
    try:
        governed.wait_for(lambda h: h["status"] == "ok" and (h["model"], h["threads"]) != (top["model"], top["threads"]),
                          timeout=60, what="a step down for the burners")
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        with governed.service.client() as client:
            client.put("/governor/settings", json={"cpu_percent": 100})
    made = decisions(governed, since)
    assert made[0]["action"] == "down" and made[0]["limit"] == "cpu" and made[0]["value"] > 60
    assert "other programs use" in made[0]["reason"]


def test_a_memory_hog_makes_room_by_unloading_first(at_top):
    """The limit is set from the memory available now so that a 3 GiB hog crosses it on any machine."""
    governed, since = at_top, time.time()
    memory = psutil.virtual_memory()
    limit = int(100 * (memory.available - 1.5 * GIB) / memory.total)
    with governed.service.client() as client:
        assert client.put("/governor/settings", json={"memory_percent": limit, "margin_percent": 1}).status_code == 200
    log_start = len(governed.service.output())
    hog = subprocess.Popen([sys.executable, "-c", "import signal; hog = b'x' * (3 * 2**30); print('held', flush=True); "
                            "signal.pause()"], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline() == "held\n"
        down = governed.wait_for(lambda h: h["status"] == "ok" and h["governor"]["index"] >= 1, timeout=60,
                                 what="a step down for the hog")
        time.sleep(6)  # longer than the calm window: the bigger rung does not fit, so it stays down
        assert governed.health()["governor"]["index"] >= down["governor"]["index"]
    finally:
        hog.kill()
        hog.wait()
    made = decisions(governed, since)
    assert made[0]["action"] == "down" and made[0]["limit"] == "memory" and made[0]["value"] <= limit
    assert not any(d["action"] == "up" for d in made)
    log = governed.service.output()[log_start:]
    # The engine lets go of the served model before it loads the smaller one.
    assert log.index("unloaded large.gguf") < log.index("loaded large.gguf (1 threads")
    with governed.service.client() as client:
        assert client.put("/governor/settings", json={"memory_percent": 0, "margin_percent": 15}).status_code == 200
    governed.wait_for(lambda h: h["governor"]["index"] == 0, timeout=120, what="back up once the hog is gone")


def test_twenty_streams_across_a_swap_all_complete(at_top):
    governed = at_top

    def stream(i: int) -> tuple[str, int, float, float]:
        with governed.service.client() as client:
            with client.stream("POST", "/v1/chat/completions", json={
                    "model": "paladin", "messages": [{"role": "user", "content": f"story {i}"}], "stream": True,
                    "max_tokens": 40, "ignore_eos": True, "stream_options": {"include_usage": True}}) as response:
                assert response.status_code == 200, response.read()
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        chunks = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
        assert lines[-1] == "data: [DONE]" and not any("error" in c for c in chunks)
        return chunks[0]["model"], chunks[-1]["usage"]["completion_tokens"], time.monotonic(), start

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        start = time.monotonic()
        futures = [pool.submit(stream, i) for i in range(20)]
        time.sleep(0.5)
        governed.sensors.set(HOT)
        results = [f.result(timeout=300) for f in futures]
    governed.sensors.set(COOL)
    assert [tokens for _, tokens, _, _ in results] == [40] * 20
    models = [model for model, _, _, _ in sorted(results, key=lambda r: r[2])]
    assert models[0] == "large" and len(set(models)) >= 2, models
    # The swap came between streams: in the order they finished, the served model only ever got smaller.
    order = ["large", "medium", "small"]
    assert [order.index(m) for m in models] == sorted(order.index(m) for m in models)
