"""The token path's one transport interface (``services.common.transport``), held to the same contract by
both implementations, against a real gRPC stand-in worker: the multiplexed call (production) and a Generate
call per stream. Chunks arrive to the end; a stream's own status arrives as its error; a cancel stops it on
the server; a request too large for the hop fails alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.grpcutil import MAX_MESSAGE_BYTES, insecure_channel
from services.common.mux import MuxChannel
from services.common.pb import inference_pb2 as pb
from services.common.transport import CallTransport, Transport
from services.router.standin import start_standin
from tests.router.conftest import chat, until


@pytest.fixture(params=["multiplexed", "per-call"])
async def served(request):
    standin = await start_standin(token_delay_s=0.02)
    channel = insecure_channel(standin.address)
    transport: Transport = (MuxChannel(channel, "/llmsvc.v1.Inference/GenerateMany") if request.param == "multiplexed"
                            else CallTransport(channel, "/llmsvc.v1.Inference/Generate"))
    yield transport, standin
    transport.close()
    await channel.close()
    await standin.server.stop(0)


async def _read_all(stream) -> pb.GenerateChunk:
    merged = b""
    while (data := await stream.next()) is not None:
        merged += data
    return pb.GenerateChunk.FromString(merged)


async def test_every_chunk_arrives_and_the_stream_ends(served):
    transport, _ = served
    replies = await asyncio.gather(*(_read_all(transport.open(chat(f"q{i}", max_tokens=5), 10)) for i in range(4)))
    for reply in replies:
        assert "".join(c.text for c in reply.choices) == "".join(f"tok{i} " for i in range(5))
        assert reply.finished and reply.usage.completion_tokens == 5


async def test_a_streams_own_status_is_its_error_and_others_go_on(served):
    transport, _ = served
    unknown = chat("x")
    unknown.model = "nope"
    good = transport.open(chat("fine", max_tokens=5), 10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read_all(transport.open(unknown, 10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await _read_all(good)).finished


async def test_cancel_stops_the_stream_on_the_server(served):
    transport, standin = served
    stream = transport.open(chat("long", max_tokens=500), 30)
    assert await stream.next()
    await until(lambda: standin.servicer.active == 1)
    assert stream.cancel() and stream.done()
    await until(lambda: standin.servicer.active == 0)
    stream.close()


async def test_a_request_too_large_for_the_hop_fails_alone(served):
    transport, standin = served
    others = [transport.open(chat(f"s{i}", max_tokens=10), 30) for i in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read_all(transport.open(chat("x" * (MAX_MESSAGE_BYTES + 1)), 30))
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    for stream in others:
        assert (await _read_all(stream)).usage.completion_tokens == 10
    assert len(standin.servicer.seen) == 3
