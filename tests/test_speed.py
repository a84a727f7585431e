"""The speed table (appliance/speed.yaml, measured by `./build.py bench speed`) and what the box makes of it:
an estimate of how fast each tier writes here, and the tier a box is offered first."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.catalog import Catalog
from appliance.speed import FAST_ENOUGH, THREADS, WORDS_PER_TOKEN, Calibration, Estimate, SpeedError, Table
from tests.support.generated import Generated

pytestmark = pytest.mark.unit

SHIPPED, TABLE = Catalog.read(), Table.read()
GIB = 2**30
SPEEDS = Generated(Path(__file__).parents[1] / "docs/models.md", "<!-- the speed table: generated from appliance/speed.yaml",
                   "<!-- end of the speed table -->")


def test_the_table_has_every_tier_at_each_thread_count():
    assert set(TABLE.decode) == {t.name for t in SHIPPED.tiers}
    raw = yaml.safe_load((Path(__file__).parents[1] / "appliance/speed.yaml").read_text())
    assert raw["threads"] == list(THREADS) and all(len(s["prefill"]) == len(THREADS) for s in raw["tiers"].values())
    # Decoding reads every weight once a token: the smallest tier writes several times faster than the largest.
    assert TABLE.measured(SHIPPED.tiers[0].name, 2) > 5 * TABLE.measured(SHIPPED.tiers[-1].name, 2)


def test_an_estimate_is_the_build_machines_until_the_box_has_measured_a_tier_itself():
    one, two = TABLE.measured("qwen3-1.7b", 1), TABLE.measured("qwen3-1.7b", 2)
    assert TABLE.estimate("qwen3-1.7b", 1, None) == Estimate(one, False)
    assert TABLE.estimate("qwen3-1.7b", 4, None) == Estimate(two, False)  # more threads: counted as 2
    assert TABLE.estimate("mine", 2, None) is None
    # The box wrote SmolLM2-135M at half the build machine's speed: every tier is estimated at half.
    slow = Calibration("smollm2-135m", 2, TABLE.measured("smollm2-135m", 2) / 2)
    assert TABLE.estimate("qwen3-1.7b", 2, slow) == Estimate(pytest.approx(two / 2), True)
    assert TABLE.estimate("qwen3-1.7b", 2, Calibration("mine", 2, 10.0)) == Estimate(two, False)
    assert Estimate(8.0, True).as_dict() == {"tokens_per_second": 8.0, "words_per_second": 6.0, "here": True}


@pytest.mark.parametrize("text, words", [
    ("machine: m\ntiers: {a: {decode: [1.0]}}\n", "positive decode speed at \\(1, 2\\) threads"),
    ("machine: m\ntiers: {a: {decode: [1.0, 0]}}\n", "positive decode speed"),
    ("tiers: {}\n", "not a speed table"), ("- 1\n", "not a speed table"), ("machine: m\ntiers: {a: 3}\n", "not a speed")])
def test_a_broken_table_is_refused(tmp_path, text, words):
    path = tmp_path / "speed.yaml"
    path.write_text(text)
    with pytest.raises(SpeedError, match=words):
        Table.read(path)


def test_a_4_gib_box_is_offered_a_tool_capable_1_5b_to_1_7b_tier_that_writes_faster_than_it_is_read():
    chosen = SHIPPED.recommend(4 * GIB, 15, 4096, lambda t: TABLE.estimate(t.name, 2, None))
    assert chosen.tier.name in ("qwen2.5-1.5b", "qwen3-1.7b") and chosen.tier.has_tools
    assert "words a second on the machine the speed table was measured on" in chosen.why


def test_a_slow_box_is_offered_a_smaller_tier_and_a_very_slow_one_the_fastest():
    def on(box_speed: float):
        calibration = Calibration("smollm2-135m", 2, TABLE.measured("smollm2-135m", 2) * box_speed)
        return lambda t: TABLE.estimate(t.name, 2, calibration)

    fast = SHIPPED.recommend(16 * GIB, 10, 4096, on(1.0))
    slow = SHIPPED.recommend(16 * GIB, 10, 4096, on(0.25))
    assert on(0.25)(slow.tier).tokens_per_second >= FAST_ENOUGH and slow.tier.size < fast.tier.size
    assert "words a second here" in slow.why
    crawling = SHIPPED.recommend(16 * GIB, 10, 4096, on(0.001))
    smallest_with_tools = min((t for t in SHIPPED.tiers if t.has_tools), key=lambda t: t.size)
    assert crawling.tier == smallest_with_tools and "slower than reading" in crawling.why


def speed_table() -> str:
    raw = yaml.safe_load((Path(__file__).parents[1] / "appliance/speed.yaml").read_text())
    rows = [f"| `{name}` | {s['prefill'][0]:.0f} / {s['prefill'][1]:.0f} | {s['decode'][0]:.1f} / {s['decode'][1]:.1f} "
            f"| about {s['decode'][1] * WORDS_PER_TOKEN:.0f} |" for name, s in raw["tiers"].items()]
    return "\n".join([f"Measured on {raw['machine']}.", "",
                      "| tier | prefill tokens/s (1 / 2 threads) | decode tokens/s (1 / 2 threads) | words/s (2 threads) |",
                      "| --- | --- | --- | --- |", *rows]) + "\n"


def test_the_docs_show_the_speed_table_as_it_is():
    assert SPEEDS.read() == speed_table() + "\n", "docs/models.md's speed table is stale: run " \
                                                  "`.venv/bin/python -m tests.test_speed`"


if __name__ == "__main__":
    SPEEDS.write(speed_table())
