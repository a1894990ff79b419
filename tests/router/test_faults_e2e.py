"""Fault injection on a real two-worker stack (real vLLM workers, real processes, real ports).

A worker is SIGKILLed, or SIGTERMed, in the middle of a load of concurrent
streams; afterwards it is restarted and must be re-admitted by the router.
"""

from __future__ import annotations

import asyncio
import signal

from .conftest import router_workers, wait_healthy
from .load import client_for, stream_chat

# "No client hangs": every request must end well before this (a hang detector, not a latency claim).
HANG_S = 240


def _model(stack) -> str:
    return stack.cfg.served_model_name or stack.cfg.model.name


async def _start_streams(client, model: str, n: int, max_tokens: int, tag: str):
    started = [asyncio.Event() for _ in range(n)]
    tasks = [asyncio.create_task(stream_chat(client, model, f"{tag} {i}: " + "count the rivers " * (i + 1),
                                             max_tokens, started=started[i], ignore_eos=True)) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), HANG_S)
    return tasks


async def _busiest(stack) -> tuple[int, int]:
    """(index, in-flight streams) of the worker the router has sent the most open streams."""
    load = {w.address: w.in_flight for w in await router_workers(stack)}
    counts = [load.get(f"{stack.cfg.host}:{port}", 0) for port in stack.cfg.worker_ports]
    index = max(range(len(counts)), key=counts.__getitem__)
    return index, counts[index]


def _generate_lines(stack, name: str, offset: int = 0) -> int:
    text = (stack.logs / f"{name}.log").read_text(errors="replace")[offset:]
    return text.count("generate model=")


async def _restart_and_check_readmitted(stack, client, index: int) -> None:
    name = f"worker{index}"
    offset = len((stack.logs / f"{name}.log").read_text(errors="replace"))
    stack.start_worker(index)
    await wait_healthy(stack, 2)
    more = [stream_chat(client, _model(stack), f"after restart {i} " * (i + 1), 8) for i in range(6)]
    assert all(r.complete for r in await asyncio.wait_for(asyncio.gather(*more), HANG_S))
    assert _generate_lines(stack, name, offset) > 0, "the restarted worker got no requests"


async def test_sigkill_mid_load_breaks_only_its_streams_cleanly_and_worker_is_readmitted(stack2, api_key):
    await wait_healthy(stack2, 2)
    async with client_for(stack2.cfg.base_url, api_key) as client:
        streams = await _start_streams(client, _model(stack2), 8, 300, "kill")
        victim, victim_load = await _busiest(stack2)
        assert victim_load > 0, "no worker had streams to break"
        await asyncio.to_thread(stack2.stop_proc, f"worker{victim}", signal.SIGKILL)
        # Requests that start after the kill must succeed on the other worker.
        fresh = [asyncio.create_task(stream_chat(client, _model(stack2), f"fresh {i}", 16)) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*streams), HANG_S)
        assert all(r.complete or r.broken_cleanly for r in results), results
        broken = [r for r in results if not r.complete]
        assert 1 <= len(broken) <= victim_load
        assert all(r.tokens > 0 for r in broken)  # they had started: not retryable, so they end with an error
        assert all(r.complete for r in await asyncio.wait_for(asyncio.gather(*fresh), HANG_S))
        await _restart_and_check_readmitted(stack2, client, victim)


async def test_sigterm_drains_without_breaking_a_stream(stack2, api_key):
    await wait_healthy(stack2, 2)
    async with client_for(stack2.cfg.base_url, api_key) as client:
        streams = await _start_streams(client, _model(stack2), 8, 200, "drain")
        victim, victim_load = await _busiest(stack2)
        assert victim_load > 0
        stopping = asyncio.create_task(asyncio.to_thread(stack2.stop_proc, f"worker{victim}", signal.SIGTERM, 120))
        fresh = [asyncio.create_task(stream_chat(client, _model(stack2), f"during drain {i}", 16)) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*streams, *fresh), HANG_S)
        assert all(r.complete for r in results), [r for r in results if not r.complete]
        await stopping
        assert stack2.procs[f"worker{victim}"].popen.returncode == 0  # drained and exited on its own
        await _restart_and_check_readmitted(stack2, client, victim)
