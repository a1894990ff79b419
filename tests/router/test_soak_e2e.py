"""A bounded soak on a real two-worker stack: concurrent streaming chat for ``LLMSVC_SOAK_S`` seconds
(60 by default here; the documented run is 600). Zero errors, and the resident memory of every process
(with its children: a worker's vLLM engine core) flat: after warm-up, the last quarter of the run
rises at most ``RSS_BOUND_MIB`` above the peak of the first half."""

from __future__ import annotations

import asyncio
import os
import time

import psutil

from .conftest import wait_healthy
from .load import client_for, stream_chat

SOAK_S = float(os.environ.get("LLMSVC_SOAK_S", "60"))
CONCURRENCY = 6
RSS_BOUND_MIB = 48
SYSTEM = [f"You answer questions about {t} in one line. " * 12 for t in ("rivers", "cities", "numbers")]


def tree_rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


async def _user(client, model: str, u: int, stop_at: float, outcomes: list) -> None:
    i = 0
    while time.monotonic() < stop_at:
        content = SYSTEM[(u + i) % len(SYSTEM)] + f"user {u} question {i}"
        outcomes.append(await stream_chat(client, model, content, 32, user=f"user-{u}"))
        i += 1


async def _sample(stack, stop_at: float, samples: dict) -> None:
    while time.monotonic() < stop_at:
        for name, proc in stack.procs.items():
            samples.setdefault(name, []).append(tree_rss_mib(proc.popen.pid))
        await asyncio.sleep(max(1.0, SOAK_S / 30))


async def test_soak_has_no_errors_and_flat_memory(stack2, api_key):
    await wait_healthy(stack2, 2)
    model = stack2.cfg.served_model_name or stack2.cfg.model.name
    warmup_s = max(10.0, SOAK_S * 0.2)
    async with client_for(stack2.cfg.base_url, api_key) as client:
        stop_at = time.monotonic() + warmup_s + SOAK_S
        outcomes: list = []
        await asyncio.gather(*(_user(client, model, u, time.monotonic() + warmup_s, []) for u in range(CONCURRENCY)))
        samples: dict[str, list[float]] = {}
        await asyncio.gather(_sample(stack2, stop_at, samples),
                             *(_user(client, model, u, stop_at, outcomes) for u in range(CONCURRENCY)))
    errors = [r for r in outcomes if not r.complete]
    assert not errors, f"{len(errors)} of {len(outcomes)} requests failed: {errors[:3]}"
    # Flat = the second half of the run sets no new high beyond the bound over the first half's peak
    # (one-time warm-up such as allocator arenas happens early; a leak keeps climbing).
    growth = {name: max(s[-max(1, len(s) // 4):]) - max(s[:max(1, len(s) // 2)]) for name, s in samples.items()}
    print(f"\nsoak {SOAK_S:.0f}s: {len(outcomes)} streams, 0 errors; RSS MiB start/end/late growth:",
          {k: (round(s[0]), round(s[-1]), round(growth[k], 1)) for k, s in samples.items()})
    assert all(g <= RSS_BOUND_MIB for g in growth.values()), growth
