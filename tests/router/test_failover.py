"""Retry, mid-stream failure, ejection, re-admission, draining and deadlines, over a real router and
real gRPC stand-in workers (no engine: failures are injected into the stand-ins)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from .conftest import chat, generate, router_over
from .conftest import until as _until


async def test_failure_before_first_token_is_retried_once_on_another_worker():
    # The stand-in's health stays SERVING, so polls would re-admit it after readmit_checks passes (50 ms each);
    # a bound no test run reaches keeps "ejected at once" the only thing measured here.
    async with router_over(2, policy="round_robin", readmit_checks=10_000) as (stub, router, standins):
        bad, good = standins
        bad.servicer.fail_before_first = grpc.StatusCode.UNAVAILABLE
        retries = REGISTRY.get_sample_value("llmsvc_router_retries_total", {"model": "standin"}) or 0
        for i in range(4):
            chunks = await generate(stub, chat(f"r{i}"))
            assert chunks[-1].finished and chunks[0].worker == good.address
        assert len(bad.servicer.seen) == 1  # ejected at once after its first failure
        assert REGISTRY.get_sample_value("llmsvc_router_retries_total", {"model": "standin"}) == retries + 1
        assert not router.servicer.pool.workers[bad.address].healthy


async def test_retry_is_bounded_when_every_worker_fails():
    async with router_over(3, {"fail_before_first": grpc.StatusCode.UNAVAILABLE},
                           max_attempts=2) as (stub, _, standins):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, chat("x"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert sum(len(s.servicer.seen) for s in standins) == 2


async def test_client_errors_are_not_retried():
    async with router_over(2, {"fail_before_first": grpc.StatusCode.INVALID_ARGUMENT}) as (stub, router, standins):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, chat("x"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sum(len(s.servicer.seen) for s in standins) == 1
        assert all(w.healthy for w in router.servicer.pool.workers.values())


async def test_stream_broken_after_tokens_ends_with_an_error_and_is_not_replayed():
    async with router_over(2, {"break_after_tokens": 2}, policy="round_robin") as (stub, _, standins):
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for chunk in stub.Generate(chat("x", max_tokens=5), timeout=10):
                received.append(chunk)
        assert sum(len(c.choices) for c in received) == 2  # the two tokens sent before the break
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "after it had started" in err.value.details()
        assert sum(len(s.servicer.seen) for s in standins) == 1


async def test_unhealthy_worker_is_ejected_and_readmitted_after_passing_checks():
    async with router_over(2, readmit_checks=3) as (stub, router, standins):
        pool, target = router.servicer.pool, standins[0]
        await target.set_serving(False)
        await _until(lambda: not pool.workers[target.address].healthy)
        assert {c[0].worker for c in [await generate(stub, chat(f"{i}")) for i in range(4)]} == {standins[1].address}
        await target.set_serving(True)
        await _until(lambda: pool.workers[target.address].healthy)
        assert pool.workers[target.address].ok_streak >= 3


async def test_draining_worker_gets_no_new_requests_but_finishes_its_streams():
    opts = {"token_delay_s": 0.05}
    async with router_over(2, opts, policy="round_robin") as (stub, router, standins):
        first = [asyncio.create_task(generate(stub, chat(f"{i}", max_tokens=10))) for i in range(4)]
        await _until(lambda: all(s.servicer.active for s in standins))
        standins[0].servicer.draining = True
        await _until(lambda: standins[0].address not in {w.address for w in router.servicer.pool.routable("standin")})
        later = await asyncio.gather(*(generate(stub, chat(f"l{i}")) for i in range(4)))
        assert {c[0].worker for c in later} == {standins[1].address}
        assert all(c[-1].finished for c in await asyncio.gather(*first))


async def test_deadline_propagates_to_the_worker():
    async with router_over(1) as (stub, _, standins):
        await generate(stub, chat("x"), timeout=3.0)
        remaining = standins[0].servicer.seen[-1].time_remaining
        # The worker sees the caller's 3 s budget (gRPC rounds the timeout header up a little), not "none".
        assert remaining is not None and 0 < remaining < 3.5


async def test_deadline_exceeded_mid_stream_reaches_the_caller():
    async with router_over(1, {"token_delay_s": 0.2}) as (stub, _, standins):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, chat("x", max_tokens=50), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _until(lambda: standins[0].servicer.active == 0)  # the worker's stream was cancelled too
