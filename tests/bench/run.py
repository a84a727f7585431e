"""Service benchmarks, each against a baseline measured in the same run.

    ./build.py bench run [--quick] [--json FILE] [--cpu-variant NAME]

* streaming generation speed through the service (HTTP, SSE) divided by a bare
  llama.cpp decode loop through its C API, same model, threads and prompt,
  at 128 and 1536 generated tokens, on SmolLM2-135M and a generated 640 MB model;
* time to first token over HTTP minus direct;
* 32 concurrent streaming clients: completed, errors, total tokens/s, waits;
* service memory (RSS) with no model loaded.
Numbers are printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import http.client
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import llama_cpp
import psutil

from appliance import config
from appliance.inference.llama import load_backends
from buildhost import tinymodel
from buildhost.qemu import free_port
from buildhost.wheels import smollm2
from tests.support.served import UNLIMITED, Service, serve_argv

THREADS = config.default_threads()
CONTEXT = 2048
CPU_VARIANT = ""  # --cpu-variant: inference.cpu_variant for both sides


def direct(model: Path, prompt: str, n: int) -> dict:
    """llama.cpp alone: tokenize, prefill, then a greedy sample/decode loop through the C API."""
    load_backends(CPU_VARIANT)
    m = llama_cpp.llama_model_load_from_file(str(model).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch, params.no_perf = CONTEXT, THREADS, THREADS, True
    ctx = llama_cpp.llama_init_from_model(m, params)
    vocab = llama_cpp.llama_model_get_vocab(m)
    sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(sampler, llama_cpp.llama_sampler_init_greedy())
    data = prompt.encode()
    tokens = (llama_cpp.llama_token * (len(data) + 8))()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, len(data) + 8, True, True)
    piece = ctypes.create_string_buffer(256)
    start = time.perf_counter()
    llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, count))
    stamps = []
    one = (llama_cpp.llama_token * 1)()
    for _ in range(n):
        token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
        llama_cpp.llama_token_to_piece(vocab, token, piece, 256, 0, False)
        stamps.append(time.perf_counter())
        one[0] = token
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1))
    llama_cpp.llama_sampler_free(sampler)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(m)
    return {"ttft": stamps[0] - start, "tps": (n - 1) / (stamps[-1] - stamps[0])}


def streamed(service: Service, prompt: str, n: int) -> dict:
    """One SSE stream read with the standard library's lean HTTP client: on 2 cores, a heavy
    client would steal the CPU it measures."""
    body = json.dumps({"model": "paladin", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=600)
    stamps = []
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {service.token}",
                                                          "Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    while line := response.readline():
        if line.startswith(b"data: {") and b'"text": ""' not in line:
            stamps.append(time.perf_counter())
    connection.close()
    return {"ttft": stamps[0] - start, "tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]), "tokens": len(stamps)}


def start_service(model: Path, data: Path) -> Service:
    data.mkdir(parents=True, exist_ok=True)
    # Unlimited: 32 clients on 127.0.0.1 are one address to the per-client limit, which is not what is measured.
    return Service(model, data, config=UNLIMITED | {
        "inference": {"threads": THREADS, "context_tokens": CONTEXT, "queue_size": 64, "cpu_variant": CPU_VARIANT}})


def speed(label: str, model: Path, lengths: list[int], reps: int, work: Path, results: dict) -> None:
    """Direct and served runs alternate, `reps` times each; medians are reported (this box has 2 noisy cores)."""
    service = start_service(model, work / label)
    try:
        streamed(service, "warm up", 8)
        for n in lengths:
            base, served = [], []
            for rep in range(reps):
                prompt = f"Write story {rep} of {n} about a lighthouse keeper."  # a new prompt: no KV cache hit
                base.append(direct(model, prompt, n))
                served.append(streamed(service, prompt, n))

            def median(runs: list[dict], key: str) -> float:
                return statistics.median(r[key] for r in runs)

            row = {"reps": reps, "direct_tps": median(base, "tps"), "service_tps": median(served, "tps"),
                   "ttft_direct_ms": median(base, "ttft") * 1e3, "ttft_service_ms": median(served, "ttft") * 1e3}
            row["ratio"] = row["service_tps"] / row["direct_tps"]
            row["ttft_overhead_ms"] = row["ttft_service_ms"] - row["ttft_direct_ms"]
            results[f"{label}/{n}"] = row
            print(f"{label:>10} {n:5d} tokens: direct {row['direct_tps']:7.1f} tok/s, service "
                  f"{row['service_tps']:7.1f} tok/s, ratio {row['ratio']:.3f} (target >= 0.97); TTFT overhead "
                  f"{row['ttft_overhead_ms']:+.1f} ms (target <= 20); median of {reps}", flush=True)
    finally:
        service.stop()


def concurrency(model: Path, work: Path, results: dict, clients: int = 32, n: int = 32) -> None:
    service = start_service(model, work / "concurrency")
    try:
        def one(i: int):
            try:
                r = streamed(service, f"client {i} says hello", n)
                return r["ttft"], r["tokens"], None
            except Exception as err:  # counted, not raised: errors are the measurement
                return None, 0, repr(err)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(one, range(clients)))
        wall = time.perf_counter() - start
        waits = sorted(o[0] for o in outcomes if o[0] is not None)
        row = {"clients": clients, "completed": len(waits), "errors": sum(1 for o in outcomes if o[2]),
               "tokens_per_s_total": sum(o[1] for o in outcomes) / wall,
               "wait_p50_s": statistics.median(waits) if waits else None,
               "wait_p95_s": waits[int(0.95 * (len(waits) - 1))] if waits else None}
        results["concurrency"] = row
        print(f"{clients} concurrent streams x {n} tokens: completed {row['completed']}, errors {row['errors']}, "
              f"{row['tokens_per_s_total']:.1f} tok/s total, wait p50 {row['wait_p50_s']:.2f} s, "
              f"p95 {row['wait_p95_s']:.2f} s", flush=True)
    finally:
        service.stop()


def memory(work: Path, results: dict) -> None:
    data = work / "nomodel"
    data.mkdir()
    port = free_port()
    process = subprocess.Popen(serve_argv(data, port), stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        master = psutil.Process(process.pid)
        rss = {"master_mb": master.memory_info().rss / 2**20,
               "worker_mb": sum(c.memory_info().rss for c in master.children()) / 2**20}
        results["rss_without_model"] = rss
        print(f"RSS without a model: worker {rss['worker_mb']:.0f} MB, gunicorn master {rss['master_mb']:.0f} MB "
              "(target <= 100 MB)", flush=True)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, 128 tokens")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--reps", type=int, default=5, help="runs per measurement on SmolLM2 (medians)")
    parser.add_argument("--cpu-variant", default="", help="a llama.cpp CPU variant instead of the best one "
                                                           "(inference.cpu_variant), for both sides")
    args = parser.parse_args()
    global CPU_VARIANT
    CPU_VARIANT = args.cpu_variant
    results: dict = {"threads": THREADS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        memory(work, results)
        real = smollm2()
        speed("smollm2", real, [128] if args.quick else [128, 1536], args.reps, work, results)
        concurrency(real, work, results)
        if not args.quick:
            large = tinymodel.write(work / "large.gguf", "large")
            print(f"generated model: {large.stat().st_size / 1e6:.0f} MB", flush=True)
            speed("generated", large, [128, 1536], 1, work, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
