"""Batch throughput and interactive latency while a batch runs, on one ``llmsvc`` stack.

    .venv/bin/python -m bench.batches --rounds 3 --lines 64 --max-tokens 64 --probes 20

Throughput: the same ``--lines`` chat requests, once as a batch (``/v1/batches``: upload, create, poll until
``completed``) and once sent online to ``/v1/chat/completions`` with as many in flight as the batch runner
sends (8), sides alternating by round. The batch's time runs from create to ``completed``, so it includes
the runner's polling and writing the output file.

Interactive TTFT: ``--probes`` streamed chat requests, one after another, first on an idle stack and then
while a batch of ``4 × --lines`` lines runs; the time to the first content token of each. The batch's lines
run at batch priority: the router's queue and vLLM's scheduler (``scheduling_policy: priority``) put the
interactive requests first. Prints a table per measure and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import openai

from bench.serve_lib import default_model, median, table
from services.cli.stack import Stack, StackConfig

NICE = 10


def bodies(n: int, max_tokens: int, seed: int) -> list[dict]:
    return [{"model": "tiny-random", "messages": [{"role": "user", "content": f"Story {seed}-{i}: once upon"}],
             "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True} for i in range(n)]


def start_batch(client: openai.OpenAI, reqs: list[dict]) -> str:
    data = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": b}).encode() + b"\n" for i, b in enumerate(reqs))
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def wait_batch(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    while (b := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.1)
    return b


def run_batch(client: openai.OpenAI, reqs: list[dict]) -> tuple[float, int]:
    t = time.perf_counter()
    b = wait_batch(client, start_batch(client, reqs))
    return time.perf_counter() - t, b.request_counts.failed


async def run_online(base: str, key: str, reqs: list[dict], concurrency: int) -> tuple[float, int]:
    queue, failed = list(reversed(reqs)), 0

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal failed
        while queue:
            r = await c.post(f"{base}/chat/completions", json=queue.pop(), headers={"Authorization": f"Bearer {key}"})
            failed += r.status_code != 200

    t = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    return time.perf_counter() - t, failed


def ttfts(client: openai.OpenAI, n: int, gap_s: float = 0.1) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        stream = client.chat.completions.create(model="tiny-random", stream=True, max_tokens=16, temperature=0,
                                                messages=[{"role": "user", "content": f"Probe {i}: hello"}],
                                                extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
                out.append(time.perf_counter() - t)  # the first token (a random model's may decode to '')
                break
        stream.close()
        time.sleep(gap_s)
    return out


def run(a) -> None:
    model = default_model()
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-batch-"))
    key = "sk-bench-" + secrets.token_hex(8)
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name="tiny-random", log_level="WARNING",
                                        worker_cpu_nice=NICE))
    print(f"starting llmsvc; logs in {home}", flush=True)
    stack.start()
    try:
        stack.wait_ready(timeout_s=600)
        base = stack.cfg.base_url
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        r = admin.post("/admin/keys", json={"name": "bench", "scopes": ["chat", "train"], "rpm": 10**6,
                                            "tpm": 10**9})
        user = r.json()["key"]
        client = openai.OpenAI(base_url=base, api_key=user, max_retries=0, timeout=600)
        run_batch(client, bodies(8, 8, seed=99))  # warm both paths
        asyncio.run(run_online(base, user, bodies(8, 8, seed=98), 8))
        rows, rates = [], {"batch": [], "online": []}
        for rnd in range(a.rounds):
            reqs = bodies(a.lines, a.max_tokens, seed=rnd)
            for side in (["batch", "online"] if rnd % 2 == 0 else ["online", "batch"]):
                secs, failed = run_batch(client, reqs) if side == "batch" else \
                    asyncio.run(run_online(base, user, reqs, a.concurrency))
                rates[side].append(a.lines / secs)
                rows.append([rnd, side, a.lines, failed, secs, a.lines / secs, a.lines * a.max_tokens / secs])
                print(f"round {rnd} {side}: {a.lines / secs:.2f} requests/s", flush=True)
        print(table(["round", "side", "requests", "failed", "seconds", "requests/s", "tokens/s"], rows))
        ratio = median(rates["batch"]) / median(rates["online"])
        print(f"\nmedian requests/s: batch {median(rates['batch']):.2f}, online {median(rates['online']):.2f}; "
              f"ratio batch/online {ratio:.3f}\n")

        idle = ttfts(client, a.probes)
        batch_id = start_batch(client, bodies(4 * a.lines, a.max_tokens, seed=1000))
        while client.batches.retrieve(batch_id).request_counts.completed < 1:
            time.sleep(0.05)
        busy = ttfts(client, a.probes)
        left = client.batches.retrieve(batch_id)
        still = left.status == "in_progress"
        wait_batch(client, batch_id)
        rows = [["idle", len(idle), statistics.median(idle) * 1000, max(idle) * 1000],
                ["during batch", len(busy), statistics.median(busy) * 1000, max(busy) * 1000]]
        print(table(["interactive", "probes", "TTFT p50 ms", "TTFT max ms"], rows))
        print(f"\nTTFT p50 during a batch / idle: {statistics.median(busy) / statistics.median(idle):.2f} "
              f"(the batch {'was still running' if still else 'had ended'} after the last probe: "
              f"{left.request_counts.completed}/{left.request_counts.total} lines done)")
    finally:
        stack.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lines", type=int, default=64, help="requests per side per round")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8, help="online requests in flight (the runner's 8)")
    p.add_argument("--probes", type=int, default=20, help="interactive requests per TTFT measure")
    run(p.parse_args())


if __name__ == "__main__":
    main()
