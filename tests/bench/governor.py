"""The resource governor: how fast it reacts, what a step down costs in speed, and what it costs itself.

    ./build.py bench governor [--json FILE] [--reps N] [--png FILE]

The real governor (default sampling, default 10-second breach window) beside the real service, on
generated models of three sizes (large at the top, 1 thread and a 512-token context, so each rung is a
smaller model).  Heat comes from a sensor tree the benchmark writes.

* Reaction: seconds from the start of a sustained breach to the smaller model serving, minus the breach
  window (goal <= 10 s).  Between repetitions the calm window and the dwell are shortened so the box is
  back at the top quickly; neither is on the measured path.
* Tokens per second on the top model and on the model after the step down (ratio after / before).
* The governor's own CPU time over the whole run, as a share of one core (goal < 1 %).
`--png FILE` screenshots the owner's Resources page (real Chromium) with the run's history plotted.
Numbers are printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from appliance import config, db as database, owner
from tests.support.governing import COOL, HOT, Governed

PASSWORD = "correct horse battery staple"


def tokens_per_second(client: httpx.Client) -> tuple[str, float]:
    started = time.perf_counter()
    done = client.post("/v1/completions", json={"model": "paladin", "prompt": "Once", "max_tokens": 64,
                                                "ignore_eos": True}).json()
    return done["model"], done["usage"]["completion_tokens"] / (time.perf_counter() - started)


def wait(governed: Governed, predicate, timeout: float = 600) -> tuple[dict, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = governed.health()
        if predicate(health):
            return health, time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"not reached in {timeout} s: {governed.health()}")


def at_top(health: dict) -> bool:
    return health.get("status") == "ok" and health.get("model") == "large" and health["governor"].get("index") == 0


def run(governed: Governed, reps: int, results: dict) -> None:
    breach = config.GovernorConfig().breach_seconds
    reactions, before, after = [], [], []
    with governed.service.client() as client:
        for _ in range(reps):
            governed.sensors.set(COOL)
            wait(governed, at_top)
            before.append(tokens_per_second(client)[1])
            governed.sensors.set(HOT)
            hot_at = time.monotonic()
            health, served_at = wait(governed, lambda h: h.get("status") == "ok" and h.get("model") == "medium")
            reactions.append(served_at - hot_at - breach)
            model, speed = tokens_per_second(client)
            assert model == "medium", model
            after.append(speed)
    governed.sensors.set(COOL)
    results["reaction"] = {"breach_window_s": breach, "seconds": reactions, "median_s": statistics.median(reactions),
                           "ratio_to_goal": statistics.median(reactions) / 10}
    results["speed"] = {"top_tokens_per_s": statistics.median(before), "after_tokens_per_s": statistics.median(after),
                        "ratio": statistics.median(after) / statistics.median(before)}
    print(f"reaction: {statistics.median(reactions):.2f} s from the end of the {breach} s breach window to the "
          f"smaller model serving (runs: {', '.join(f'{r:.2f}' for r in reactions)}); "
          f"ratio to the 10 s goal {statistics.median(reactions) / 10:.3f}")
    print(f"speed: top model {statistics.median(before):.1f} tok/s, after the step down "
          f"{statistics.median(after):.1f} tok/s: ratio {statistics.median(after) / statistics.median(before):.2f}")


def screenshot(governed: Governed, png: Path) -> None:
    from tests.support.wizard import browser_page, log_in

    db = database.connect(config.parse({"data_dir": str(governed.service.data_dir)}).data.database)
    owner.set_account(db, "Ada", PASSWORD)
    owner.finish(db)
    db.close()
    with browser_page() as page:
        page.set_viewport_size({"width": 1200, "height": 900})
        log_in(page, governed.service.https_url)
        page.goto(governed.service.https_url + "/manage/governor")
        page.wait_for_selector("svg polyline, svg path", timeout=30_000)
        time.sleep(3)  # a poll or two: the whole history drawn
        page.locator("#graphs").screenshot(path=str(png))
    print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--reps", type=int, default=3, help="step downs measured (medians)")
    parser.add_argument("--png", type=Path, help="screenshot the Resources page with the run's history here")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as work:
        governed = Governed(Path(work), sizes=("small", "medium", "large"), top="large", interval=1.0,
                            governor={"breach_seconds": config.GovernorConfig().breach_seconds, "calm_seconds": 5,
                                      "dwell_seconds": 5},
                            inference={"threads": 1, "context_tokens": 512})
        process = psutil.Process(governed.governor.process.pid)
        started, first = time.monotonic(), process.cpu_times()  # its start-up (imports) is not sampling
        try:
            run(governed, args.reps, results)
            cpu = process.cpu_times()
            share = 100 * (cpu.user + cpu.system - first.user - first.system) / (time.monotonic() - started)
            results["governor_cpu"] = {"percent_of_one_core": share, "ratio_to_goal": share / 1.0,
                                       "seconds": time.monotonic() - started}
            print(f"governor's own CPU: {share:.2f} % of one core over {time.monotonic() - started:.0f} s "
                  f"(ratio to the 1 % goal {share:.2f})")
            if args.png:
                screenshot(governed, args.png)
        finally:
            governed.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
