"""The router's multiplexed transport to workers (``Inference.GenerateMany``), over real gRPC stand-ins.

Streams to one worker share one call, and each still ends as its own Generate call would: its own
status, its own cancellation, and the whole call's error when the worker goes away. A worker that
does not offer GenerateMany gets one Generate call per request, as before.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from services.common.grpcutil import insecure_channel
from services.common.mux import MuxChannel
from services.common.pb import inference_pb2 as pb

from .conftest import chat, generate, router_over, until


async def test_concurrent_streams_share_one_call_and_each_gets_its_own_reply():
    async with router_over(1, {"token_delay_s": 0.02}) as (stub, _, standins):
        replies = await asyncio.gather(*(generate(stub, chat(f"q{i}", max_tokens=6)) for i in range(12)))
        assert standins[0].servicer.mux_calls == 1
        for reply in replies:
            assert "".join(d.text for c in reply for d in c.choices) == "".join(f"tok{i} " for i in range(6))
            assert reply[-1].finished and reply[-1].usage.completion_tokens == 6
        assert len(standins[0].servicer.seen) == 12


async def test_one_message_carries_every_streams_step():
    """Ten streams paced alike: the worker sends about one message per step for all ten, not ten."""
    async with router_over(1, {"token_delay_s": 0.05}) as (_, _, standins):
        channel = insecure_channel(standins[0].address)
        method = channel.stream_stream("/llmsvc.v1.Inference/GenerateMany",
                                       request_serializer=pb.MuxRequest.SerializeToString,
                                       response_deserializer=pb.MuxResponse.FromString)
        queue: asyncio.Queue = asyncio.Queue()
        for sid in range(1, 11):
            queue.put_nowait(pb.MuxRequest(open=pb.StreamOpen(stream_id=sid, request=chat(f"s{sid}", max_tokens=5))))

        async def requests():
            while (msg := await queue.get()) is not None:
                yield msg

        call = method(requests(), timeout=20)
        messages, chunks, ended = 0, {}, set()
        async for batch in call:
            messages += 1
            for f in batch.frames:
                chunks[f.stream_id] = chunks.get(f.stream_id, b"") + f.chunks
                if f.end:
                    assert f.code == 0
                    ended.add(f.stream_id)
            if len(ended) == 10:
                queue.put_nowait(None)  # half-close: the worker ends the call once its streams are done
        await channel.close()
        for sid in range(1, 11):
            merged = pb.GenerateChunk.FromString(chunks[sid])
            assert [d.text for d in merged.choices] == [f"tok{i} " for i in range(5)]
        assert messages < 25, f"{messages} messages for 50 chunks of 10 streams in 5 steps"


async def test_a_failing_stream_ends_alone_and_its_status_reaches_the_caller():
    async with router_over(1, {"token_delay_s": 0.02}) as (stub, _, standins):
        ok = [asyncio.create_task(generate(stub, chat(f"ok{i}", max_tokens=10))) for i in range(4)]
        await until(lambda: standins[0].servicer.active == 4)
        standins[0].servicer.break_after_tokens = 3
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, chat("breaks", max_tokens=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "failed after it had started" in err.value.details()
        # The four streams started before were past token 3 or stop there too; none hangs.
        results = await asyncio.gather(*ok, return_exceptions=True)
        assert all(isinstance(r, (list, grpc.aio.AioRpcError)) for r in results)
        # Each ended as its own call would: broken mid-stream, or complete with all its tokens.
        for r in results:
            if isinstance(r, grpc.aio.AioRpcError):
                assert r.code() == grpc.StatusCode.UNAVAILABLE and "failed after it had started" in r.details()
            else:
                assert r[-1].finished and r[-1].usage.completion_tokens == 10


async def test_bad_input_on_a_multiplexed_stream_is_the_same_status_and_trailer():
    async with router_over(1) as (stub, _, _standins):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, chat("x", max_tokens=5000))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.value.trailing_metadata())["param"] == "max_tokens"
        # The call survives a stream's error: the next request is served on it.
        assert (await generate(stub, chat("y")))[-1].finished


async def test_cancelling_one_stream_stops_it_on_the_worker_and_leaves_the_others():
    async with router_over(1, {"token_delay_s": 0.05}) as (stub, _, standins):
        keep = asyncio.create_task(generate(stub, chat("keep", max_tokens=20)))
        call = stub.Generate(chat("drop", max_tokens=200), timeout=30)
        await call.read()
        await until(lambda: standins[0].servicer.active == 2)
        call.cancel()
        await until(lambda: standins[0].servicer.active == 1)
        reply = await keep
        assert reply[-1].finished and reply[-1].usage.completion_tokens == 20
        assert standins[0].servicer.mux_calls == 1


async def test_a_stream_deadline_is_enforced_by_the_worker():
    async with router_over(1, {"token_delay_s": 0.2}) as (stub, _, standins):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generate(stub, chat("slow", max_tokens=50), timeout=0.6)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: standins[0].servicer.active == 0)
        # gRPC sends a deadline as a timeout rounded up to its unit, so the far side may see a hair more
        assert 0 < standins[0].servicer.seen[-1].time_remaining <= 0.6 + 0.01


async def test_a_worker_that_dies_fails_every_stream_on_it_and_new_requests_go_elsewhere():
    async with router_over(2, {"token_delay_s": 0.05}, policy="round_robin") as (stub, router, standins):
        calls = [stub.Generate(chat(f"s{i}", max_tokens=100), timeout=30) for i in range(6)]
        firsts = [await c.read() for c in calls]  # every stream has started: none can be retried now
        assert sorted(f.worker for f in firsts) == sorted([s.address for s in standins] * 3)

        async def rest(call) -> list:
            out = []
            while (chunk := await call.read()) is not grpc.aio.EOF:
                out.append(chunk)
            return out

        await standins[0].server.stop(0)
        results = await asyncio.wait_for(asyncio.gather(*map(rest, calls), return_exceptions=True), 20)
        broken = [r for r, f in zip(results, firsts, strict=True) if f.worker == standins[0].address]
        assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAVAILABLE
                   for r in broken), broken
        assert all(r[-1].finished for r, f in zip(results, firsts, strict=True) if f.worker == standins[1].address)
        later = await asyncio.gather(*(generate(stub, chat(f"l{i}")) for i in range(4)))
        assert {c[0].worker for c in later} == {standins[1].address}


async def test_a_draining_worker_ends_its_call_and_new_streams_reopen_elsewhere():
    async with router_over(2, {"token_delay_s": 0.02}, policy="round_robin") as (stub, router, standins):
        await asyncio.gather(*(generate(stub, chat(f"w{i}")) for i in range(4)))
        standins[0].servicer.draining = True
        await until(lambda: standins[0].address not in {w.address for w in router.servicer.pool.routable("standin")})
        later = await asyncio.gather(*(generate(stub, chat(f"l{i}")) for i in range(4)))
        assert {c[0].worker for c in later} == {standins[1].address}
        standins[0].servicer.draining = False  # back: a new call is opened for it
        await until(lambda: len(router.servicer.pool.routable("standin")) == 2)
        again = await asyncio.gather(*(generate(stub, chat(f"a{i}")) for i in range(4)))
        assert {c[0].worker for c in again} == {s.address for s in standins}


async def test_workers_without_generate_many_get_one_call_per_request():
    async with router_over(1, {"multiplex": False}) as (stub, _, standins):
        requests = [chat(f"q{i}") for i in range(3)]
        for i, r in enumerate(requests):
            r.request_id = f"req-{i}"
        replies = await asyncio.gather(*(generate(stub, r) for r in requests))
        assert all(r[-1].finished for r in replies)
        assert standins[0].servicer.mux_calls == 0
        # Plain Generate calls: the request id travels in each call's own metadata.
        assert sorted(seen.metadata.get("x-request-id")
                      for seen in standins[0].servicer.seen) == ["req-0", "req-1", "req-2"]


async def test_multiplexing_can_be_turned_off_in_the_router():
    async with router_over(1, multiplex=False) as (stub, _, standins):
        assert (await generate(stub, chat("q")))[-1].finished
        assert standins[0].servicer.mux_calls == 0


# -- gateway → router: Router.GenerateMany ----------------------------------------------------------------------

class RouterMux:
    """Router generations over one Router.GenerateMany call, as the gateway makes them."""

    def __init__(self, port: int) -> None:
        self.channel = insecure_channel(f"127.0.0.1:{port}")
        self.mux = MuxChannel(self.channel, "/llmsvc.v1.Router/GenerateMany")

    async def generate(self, request: pb.GenerateRequest, timeout: float = 10.0) -> list[pb.GenerateChunk]:
        stream = self.mux.open(request, timeout)
        try:
            return [pb.GenerateChunk.FromString(raw) async for raw in _messages(stream)]
        finally:
            stream.close()

    async def close(self) -> None:
        self.mux.close()
        await self.channel.close()


async def _messages(stream):
    while (raw := await stream.next()) is not None:
        yield raw


@contextlib.asynccontextmanager
async def router_mux(n_workers: int, standin_options: dict | None = None, **settings):
    async with router_over(n_workers, standin_options, **settings) as (stub, router, standins):
        client = RouterMux(router.port)
        try:
            yield client, router, standins
        finally:
            await client.close()


async def test_the_router_serves_many_generations_over_one_call_with_the_worker_tag():
    async with router_mux(2, {"token_delay_s": 0.01}, policy="round_robin") as (client, _, standins):
        replies = await asyncio.gather(*(client.generate(chat(f"q{i}", max_tokens=8)) for i in range(10)))
        for reply in replies:
            assert "".join(d.text for c in reply for d in c.choices) == "".join(f"tok{i} " for i in range(8))
            assert reply[-1].finished and reply[0].worker in {s.address for s in standins}
        assert {r[0].worker for r in replies} == {s.address for s in standins}


async def test_router_errors_keep_their_status_and_trailers_over_the_call():
    async with router_mux(1, {"token_delay_s": 0.1}, max_in_flight_per_worker=1, queue_size=1) as (client, _, _s):
        results = await asyncio.gather(*(client.generate(chat(f"{i}", max_tokens=5)) for i in range(4)),
                                       return_exceptions=True)
        rejected = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(rejected) == 2
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                   and int(dict(r.trailing_metadata())["retry-after"]) >= 1
                   for r in rejected)
        unknown = chat("x")
        unknown.model = "nope"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(unknown)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await client.generate(chat("after")))[-1].finished  # the call survived them all


async def test_a_generation_deadline_and_a_cancel_reach_the_worker_through_both_calls():
    async with router_mux(1, {"token_delay_s": 0.1}) as (client, _, standins):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(chat("slow", max_tokens=50), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: standins[0].servicer.active == 0)
        assert 0 < standins[0].servicer.seen[-1].time_remaining <= 0.5
        stream = client.mux.open(chat("dropped", max_tokens=200), 30)
        assert await stream.next()
        await until(lambda: standins[0].servicer.active == 1)
        stream.close()
        await until(lambda: standins[0].servicer.active == 0)  # the vLLM request would be aborted here


async def test_a_draining_router_refuses_new_generations_and_finishes_open_ones():
    async with router_mux(1, {"token_delay_s": 0.05}) as (client, router, _standins):
        running = asyncio.create_task(client.generate(chat("open", max_tokens=10)))
        await asyncio.sleep(0.1)
        router.servicer.draining = True
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(chat("new"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in err.value.details()
        assert (await running)[-1].usage.completion_tokens == 10


async def test_a_request_over_the_old_4_mib_server_limit_is_served_beside_other_streams():
    """Measured before the fix: one 5 MiB prompt ended the gateway's shared call (the router received at most
    4 MiB) and every stream on it broke. Every hop now takes the same 64 MiB in both directions."""
    async with router_mux(1, {"token_delay_s": 0.05}) as (client, _, standins):
        others = [asyncio.create_task(client.generate(chat(f"s{i}", max_tokens=10))) for i in range(4)]
        await until(lambda: standins[0].servicer.active == 4)
        big = await client.generate(chat("x" * (5 * 1024 * 1024), max_tokens=2))
        assert big[-1].finished
        for reply in await asyncio.gather(*others):
            assert reply[-1].finished and reply[-1].usage.completion_tokens == 10


async def test_a_request_larger_than_any_hop_carries_fails_alone_before_it_is_sent():
    from services.common.mux import MAX_OPEN_BYTES

    async with router_mux(1, {"token_delay_s": 0.05}) as (client, _, standins):
        others = [asyncio.create_task(client.generate(chat(f"s{i}", max_tokens=10))) for i in range(4)]
        await until(lambda: standins[0].servicer.active == 4)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(chat("x" * (MAX_OPEN_BYTES + 1), max_tokens=2))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.value.trailing_metadata())["error-code"] == "request_too_large"
        for reply in await asyncio.gather(*others):
            assert reply[-1].finished and reply[-1].usage.completion_tokens == 10
        assert len(standins[0].servicer.seen) == 4  # the big one never reached the worker


async def test_the_observability_interceptor_counts_multiplexed_calls_too():
    """Every call kind is counted and timed (``llmsvc_grpc_requests_total``), the long-lived GenerateMany
    calls of both hops included, once each when they end."""
    from prometheus_client import REGISTRY

    def total(service: str) -> float:
        return sum(REGISTRY.get_sample_value("llmsvc_grpc_requests_total",
                                             {"service": service, "method": "GenerateMany", "code": code}) or 0
                   for code in ("OK", "CANCELLED", "UNAVAILABLE"))

    before = total("router")
    async with router_mux(1, {"token_delay_s": 0.01}) as (client, _, _standins):
        assert (await client.generate(chat("q", max_tokens=3)))[-1].finished
    await until(lambda: total("router") > before)
