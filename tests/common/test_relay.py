"""services.common.relay.Relay over a real gRPC stream (the stand-in worker on a real port).

The Relay is on the token path twice (router → gateway, gateway → HTTP): when its consumer lags,
what piled up must go on as one message that decodes to exactly the chunks it replaced, and a
stream's error must still reach the consumer after the chunks that came before it.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.pb import inference_pb2 as pb
from services.common.relay import Relay
from services.router.standin import start_standin

_GENERATE = "/llmsvc.v1.Inference/Generate"


@pytest.fixture
async def standin():
    s = await start_standin(models=["m"])
    yield s
    await s.server.stop(0)


def _request(tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id="r1", model="m", params=pb.SamplingParams(max_tokens=tokens),
                              chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")]))


async def _drain(relay: Relay) -> list[pb.GenerateChunk]:
    out = []
    while (raw := await relay.next()) is not None:
        out.append(pb.GenerateChunk.FromString(raw))
    return out


async def _open(standin, tokens: int):
    channel = grpc.aio.insecure_channel(standin.address)
    raw = channel.unary_stream(_GENERATE, request_serializer=pb.GenerateRequest.SerializeToString,
                               response_deserializer=None)
    return channel, raw(_request(tokens), timeout=30)


async def test_a_lagging_consumer_gets_what_piled_up_as_one_merged_chunk(standin):
    channel, call = await _open(standin, 300)
    relay = Relay(call)
    try:
        await call.wait_for_connection()
        for _ in range(200):  # the consumer is "busy" until the whole stream has arrived
            if call.done():
                break
            await asyncio.sleep(0.01)
        assert call.done()
        chunks = await _drain(relay)
    finally:
        relay.close()
        await channel.close()
    assert len(chunks) == 1, "300 chunks that arrived while nobody read must go on as one"
    merged = chunks[0]
    assert [d.text for d in merged.choices] == [f"tok{i} " for i in range(300)]
    assert [d.finish_reason for d in merged.choices] == [""] * 299 + ["length"]
    assert merged.finished and merged.usage.completion_tokens == 300 and merged.usage.prompt_tokens == 4
    assert merged.model == "m" and merged.request_id == "r1"


async def test_a_consumer_that_keeps_up_gets_one_chunk_per_message(standin):
    standin.servicer.token_delay_s = 0.05
    channel, call = await _open(standin, 5)
    relay = Relay(call)
    try:
        chunks = await _drain(relay)
    finally:
        relay.close()
        await channel.close()
    assert [len(c.choices) for c in chunks] == [1] * 5
    assert [c.finished for c in chunks] == [False] * 4 + [True]


async def test_an_error_mid_stream_arrives_after_the_chunks_before_it(standin):
    standin.servicer.break_after_tokens = 3
    channel, call = await _open(standin, 10)
    relay = Relay(call)
    try:
        texts = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while (raw := await relay.next()) is not None:
                texts += [d.text for d in pb.GenerateChunk.FromString(raw).choices]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert texts == ["tok0 ", "tok1 ", "tok2 "]
    finally:
        relay.close()
        await channel.close()


async def test_close_cancels_the_reader_and_the_call_can_be_cancelled(standin):
    standin.servicer.token_delay_s = 0.05
    channel, call = await _open(standin, 200)
    relay = Relay(call)
    try:
        first = pb.GenerateChunk.FromString(await relay.next())
        assert first.choices[0].text == "tok0 "
        relay.close()
        call.cancel()
        for _ in range(100):  # the stand-in sees the cancellation: its stream count drops to 0
            if standin.servicer.active == 0:
                break
            await asyncio.sleep(0.02)
        assert standin.servicer.active == 0
    finally:
        await channel.close()
