"""Home Assistant's and Open WebUI's kind of requests, each against a baseline measured in the same run.

    ./build.py bench compat [--json FILE] [--reps N]

* A Home-Assistant-shaped turn: a system prompt of about 3 000 tokens (the home's entities, as Assist
  sends them) and a short user turn, then the next turn of the same conversation.  The second turn's
  time to first token divided by the first's (goal <= 0.1: the prompt cache keeps the long prefix).
* Generation constrained by a grammar (a JSON schema, as an AI task sends one) against the same model
  unconstrained: tokens per second, constrained / free (goal >= 0.9).
Both on SmolLM2-135M (the real small model, a 49 152-token vocabulary) through the real service, with
the CPU variant that runs it here.  Numbers are printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from buildhost.wheels import smollm2
from tests.support.served import UNLIMITED, Service
from tests.support.variants import working_variant

ENTITIES = [f"light.room_{n}: Room {n} light, area Room {n}, state {'on' if n % 3 else 'off'}, brightness {n % 100}"
            for n in range(105)]
SYSTEM = "You are a voice assistant for Home Assistant. Answer briefly.\nStatic context: the home has:\n" + \
    "\n".join(ENTITIES)
SCHEMA = {"type": "object", "properties": {
    "summary": {"type": "string", "maxLength": 200}, "rooms": {"type": "array", "items": {"type": "string",
                                                                                         "maxLength": 30},
                                                               "maxItems": 8}, "urgent": {"type": "boolean"}},
          "required": ["summary", "rooms", "urgent"]}


def first_token_seconds(client: httpx.Client, messages: list[dict]) -> tuple[float, dict]:
    """Seconds to the first streamed piece of /api/chat, and the final line (its counts)."""
    started = time.perf_counter()
    first, last = None, ""
    with client.stream("POST", "/api/chat", json={"model": "paladin", "messages": messages, "stream": True,
                                                   "options": {"num_predict": 16, "temperature": 0}}) as response:
        for line in response.iter_lines():
            if line and first is None:
                first = time.perf_counter() - started
            last = line or last
    return first, json.loads(last)


def prefix_cache(client: httpx.Client, reps: int, results: dict) -> None:
    ratios, firsts, seconds = [], [], []
    for rep in range(reps):
        # A different first word each time: no repetition may start warm from the one before.
        system = f"Session {rep}. " + SYSTEM
        one = [{"role": "system", "content": system}, {"role": "user", "content": "Turn on the kitchen light"}]
        first, done = first_token_seconds(client, one)
        two = one + [{"role": "assistant", "content": "Done."}, {"role": "user", "content": "And the hall?"}]
        second, _ = first_token_seconds(client, two)
        ratios.append(second / first)
        firsts.append(first)
        seconds.append(second)
    results["prefix_cache"] = {"system_prompt_tokens": done["prompt_eval_count"],
                               "first_turn_ttft_s": statistics.median(firsts),
                               "second_turn_ttft_s": statistics.median(seconds), "ratio": statistics.median(ratios)}
    print(f"Home Assistant turn: {done['prompt_eval_count']} prompt tokens; TTFT first "
          f"{statistics.median(firsts):.3f} s, second {statistics.median(seconds):.3f} s: "
          f"ratio {statistics.median(ratios):.3f} (goal <= 0.1)")


def tokens_per_second(client: httpx.Client, body: dict) -> float:
    done = client.post("/api/chat", json={"model": "paladin", "stream": False} | body).json()
    return done["eval_count"] / (done["eval_duration"] / 1e9)


def grammar_speed(client: httpx.Client, reps: int, results: dict) -> None:
    ask = [{"role": "user", "content": "Summarise the state of the home in JSON: which rooms need attention?"}]
    free, bound = [], []
    for rep in range(reps):
        options = {"num_predict": 96, "temperature": 0.7, "seed": rep}
        free.append(tokens_per_second(client, {"messages": ask, "options": options}))
        bound.append(tokens_per_second(client, {"messages": ask, "options": options, "format": SCHEMA}))
    ratio = statistics.median(bound) / statistics.median(free)
    results["grammar"] = {"free_tokens_per_s": statistics.median(free),
                          "constrained_tokens_per_s": statistics.median(bound), "ratio": ratio}
    print(f"grammar-constrained generation: {statistics.median(bound):.1f} tok/s vs free "
          f"{statistics.median(free):.1f} tok/s: ratio {ratio:.3f} (goal >= 0.9)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--reps", type=int, default=5, help="runs per measurement (medians)")
    args = parser.parse_args()
    model = smollm2()
    results: dict = {"model": model.name}
    with tempfile.TemporaryDirectory() as work:
        service = Service(model, Path(work), config=UNLIMITED | {"inference": {
            "context_tokens": 4096, "cpu_variant": working_variant(model)}})
        try:
            with httpx.Client(base_url=service.url, timeout=600,
                              headers={"Authorization": f"Bearer {service.token}"}) as client:
                prefix_cache(client, args.reps, results)
                grammar_speed(client, args.reps, results)
        finally:
            service.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
