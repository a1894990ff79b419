"""The router's bounded admission queue and priority classes, over a real router and real gRPC
stand-in workers (no engine: the stand-ins' per-token delay stands in for generation time)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from prometheus_client import REGISTRY, generate_latest

from .conftest import chat, generate, router_over
from .conftest import until as _until

SLOW = {"token_delay_s": 0.1}


async def _outcome(stub, request, log: list):
    try:
        chunks = await generate(stub, request, timeout=30)
        log.append("ok")
        return "ok", chunks
    except grpc.aio.AioRpcError as exc:
        log.append("rejected")
        return exc, None


async def test_full_queue_refuses_at_once_with_retry_after_and_recovers():
    async with router_over(2, SLOW, max_in_flight_per_worker=1, queue_size=2) as (stub, router, standins):
        log: list = []
        results = await asyncio.gather(*(_outcome(stub, chat(f"{i}", max_tokens=5), log) for i in range(8)))
        rejected = [r for r, _ in results if r != "ok"]
        assert len(rejected) == 4  # 2 running (1 per worker) + 2 queued are served
        for exc in rejected:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert int(dict(exc.trailing_metadata())["retry-after"]) >= 1
        assert log[:4] == ["rejected"] * 4  # refused before any admitted request finished
        assert max(s.servicer.active for s in standins) == 0
        # Load gone: everything is admitted again.
        assert all(r == "ok" for r, _ in await asyncio.gather(*(_outcome(stub, chat("x"), []) for _ in range(4))))


async def test_waiting_past_the_queue_timeout_is_refused():
    async with router_over(1, SLOW, max_in_flight_per_worker=1, queue_timeout_s=0.2) as (stub, _, standins):
        busy = asyncio.create_task(generate(stub, chat("long", max_tokens=20)))
        await _until(lambda: standins[0].servicer.active == 1)
        exc, _ = await _outcome(stub, chat("waits"), [])
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "waited" in exc.details()
        assert REGISTRY.get_sample_value("llmsvc_router_rejected_total", {
            "model": "standin", "priority": "interactive", "outcome": "queue_timeout"}) >= 1
        await busy


async def test_interactive_requests_overtake_queued_batch_requests():
    async with router_over(1, SLOW, max_in_flight_per_worker=1, queue_size=4) as (stub, router, standins):
        busy = asyncio.create_task(generate(stub, chat("occupy", max_tokens=5)))
        await _until(lambda: standins[0].servicer.active == 1)
        batch = asyncio.create_task(generate(stub, chat("batch", priority=1)))
        await _until(lambda: router.servicer.admission.queue("standin").queued == 1)
        interactive = asyncio.create_task(generate(stub, chat("interactive", priority=0)))
        await asyncio.gather(busy, batch, interactive)
        order = [s.request.chat.messages[0].content for s in standins[0].servicer.seen]
        assert order == ["occupy", "interactive", "batch"]


async def test_batch_requests_may_fill_only_their_share_of_the_queue():
    async with router_over(1, SLOW, max_in_flight_per_worker=1, queue_size=4, batch_queue_share=0.5) as (stub, _, st):
        busy = asyncio.create_task(generate(stub, chat("occupy", max_tokens=10)))
        await _until(lambda: st[0].servicer.active == 1)
        log: list = []
        batch = await asyncio.gather(*(_outcome(stub, chat(f"b{i}", priority=1), log) for i in range(3)))
        # Only the 3rd batch request is refused (2 of 4 queue places), so interactive ones still fit.
        assert sum(r != "ok" for r, _ in batch) == 1
        assert (await _outcome(stub, chat("i"), []))[0] == "ok"
        await busy


async def test_queue_depth_reads_zero_for_a_known_model_before_any_request():
    # A model name no other test routes to, so the process-wide registry holds no series of it yet.
    model = f"idle-{uuid.uuid4().hex[:8]}"
    assert REGISTRY.get_sample_value("llmsvc_router_queue_depth", {"model": model}) is None
    async with router_over(1, {"models": ["standin", model]}) as (_, router, standins):
        assert standins[0].servicer.seen == []  # no load at all
        assert REGISTRY.get_sample_value("llmsvc_router_queue_depth", {"model": model}) == 0
        assert REGISTRY.get_sample_value("llmsvc_router_in_flight", {"model": model}) == 0
        exposed = generate_latest(REGISTRY).decode()
        assert f'llmsvc_router_queue_depth{{model="{model}"}} 0.0' in exposed
