"""Which llama.cpp CPU variant generates on this machine.  A hypervisor can report instructions it then
faults on (AMX on one Xeon VM: SIGILL as soon as a quantized model multiplies), which is what
inference.cpu_variant is for; the tests that run a quantized model find the variant the same way an
owner would, by trying."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Generate 8 tokens with the model argv[1], on the CPU variant argv[2] ("" or absent: the best one), after a
# prompt of argv[3] words (1 if absent; a long prompt takes the matrix-matrix paths, where AMX is used).
GENERATE = """
import asyncio, logging, pathlib, sys
from appliance import config
from appliance.inference import llama
logging.basicConfig(level=logging.INFO)
from appliance.inference.engine import Engine
from appliance.inference.generation import Request
from appliance.metrics import Metrics
async def main():
    words = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    settings = {"threads": 1, "context_tokens": 128 + 2 * words, "cpu_variant": sys.argv[2] if len(sys.argv) > 2 else ""}
    engine = Engine(config.parse({"inference": settings}).inference, Metrics())
    await engine.swap(pathlib.Path(sys.argv[1]))
    _, events = await engine.begin(Request(prompt="hi " * words, max_tokens=8))
    n = [e async for e in events]
    await engine.close()
    print("finished", n[-1].completion_tokens)
asyncio.run(main())
"""
# From the most capable down: the first that generates is the one to use.
PREFERENCE = ("", "icelake", "alderlake", "haswell", "sse42", "x64")


def generates(model: Path, variant: str = "", words: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GENERATE, model, variant, str(words)], capture_output=True,
                          text=True, timeout=300)


def working_variant(model: Path) -> str:
    """inference.cpu_variant for `model` on this machine: "" when the best variant the CPU reports works."""
    for variant in PREFERENCE:
        if generates(model, variant, words=200).returncode == 0:
            return variant
    raise RuntimeError(f"no CPU variant of this llama.cpp build generates with {model} here")
