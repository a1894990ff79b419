"""Embeddings throughput: llmsvc's ``/v1/embeddings`` (gateway → auth → router → pooling worker) against
``vllm serve --runner pooling --convert embed`` of the same model, in one run, sides alternating by round.

    .venv/bin/python -m bench.embeddings --rounds 3 --requests 200 --batch 8 --concurrency 8

Both engines convert the same folder (the built-in random tiny Llama) to an embedding model on load with
the same settings (enforce-eager, 64 sequences, 1 GiB KV cache, CPU nice 10). Every request sends the same
``--batch`` texts of about ``--words`` words. Prints one row per run and the median ratio of inputs per second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.serve_lib import default_model, median, start_vllm_server, stop, table, wait_models
from services.cli.stack import Stack, StackConfig, free_port

NICE = 10


def payloads(n: int, batch: int, words: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    return [[" ".join(rng.choices(vocab, k=words)) for _ in range(batch)] for _ in range(n)]


async def drive(url: str, key: str, model: str, bodies: list[list[str]], concurrency: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    failed = 0
    queue = list(reversed(bodies))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failed
        while queue:
            inputs = queue.pop()
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs}, headers=headers)
            if r.status_code != 200 or len(r.json()["data"]) != len(inputs):
                failed += 1
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    inputs = sum(len(b) for b in bodies)
    return {"requests": len(bodies), "failed": failed, "inputs_per_s": inputs / elapsed,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": sorted(latencies)[int(len(latencies) * .99) - 1]
            * 1000}


def run(a) -> None:
    model = default_model()
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-embed-"))
    key = "sk-bench-" + secrets.token_hex(8)
    port = free_port()
    print(f"starting vllm serve (pooling) and llmsvc; logs in {home}", flush=True)
    vllm = start_vllm_server(model, port, "tiny-random-embed", home / "vllm.log",
                             ["--runner", "pooling", "--convert", "embed"], nice=NICE)
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name="tiny-random", log_level="WARNING",
                                        embeddings=True, worker_cpu_nice=NICE))
    stack.start()
    try:
        wait_models(f"http://127.0.0.1:{port}", proc=vllm)
        stack.wait_ready(timeout_s=600)
        sides = {"vllm": (f"http://127.0.0.1:{port}", ""), "llmsvc": (stack.cfg.base_url.removesuffix("/v1"), key)}
        name = stack.cfg.embed_model_name
        warm = payloads(16, a.batch, a.words, seed=99)
        for url, k in sides.values():
            asyncio.run(drive(url, k, name, warm, a.concurrency))
        rows, by_side = [], {s: [] for s in sides}
        for rnd in range(a.rounds):
            bodies = payloads(a.requests, a.batch, a.words, seed=rnd)
            order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
            for side in order:
                url, k = sides[side]
                r = asyncio.run(drive(url, k, name, bodies, a.concurrency))
                by_side[side].append(r["inputs_per_s"])
                rows.append([rnd, side, r["requests"], r["failed"], r["inputs_per_s"], r["p50_ms"], r["p99_ms"]])
                print(f"round {rnd} {side}: {r['inputs_per_s']:.1f} inputs/s", flush=True)
        print(table(["round", "side", "requests", "failed", "inputs/s", "p50 ms", "p99 ms"], rows))
        ratio = median(by_side["llmsvc"]) / median(by_side["vllm"])
        print(f"\nmedian inputs/s: llmsvc {median(by_side['llmsvc']):.1f}, vllm {median(by_side['vllm']):.1f}; "
              f"ratio llmsvc/vllm {ratio:.3f}")
    finally:
        stack.stop()
        stop(vllm)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=200, help="requests per side per round")
    p.add_argument("--batch", type=int, default=8, help="inputs per request")
    p.add_argument("--words", type=int, default=64, help="words per input")
    p.add_argument("--concurrency", type=int, default=8)
    run(p.parse_args())


if __name__ == "__main__":
    main()
