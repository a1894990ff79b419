"""Closing a stream mid-way aborts the request in the vLLM worker."""

from __future__ import annotations

import asyncio
import time

from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc


def _worker_load(stack) -> pb.Load:
    async def get() -> pb.Load:
        async with stack.channel(stack.cfg.worker_ports[0]) as ch:
            return await inference_pb2_grpc.InferenceStub(ch).GetLoad(pb.GetLoadRequest(), timeout=5)

    return asyncio.run(get())


def test_closing_stream_aborts_worker_request(stack, openai_client, model_name):
    rid = f"cancel-{time.time_ns()}"
    stream = openai_client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "go on forever"}], max_tokens=900,
        # The random model emits EOS about once in a thousand tokens; ignore it, and ask for 8 choices of
        # 900 tokens (several seconds of engine time) so that the stream is surely mid-way when it is closed.
        n=8, temperature=1.0,
        stream=True, extra_headers={"x-request-id": rid}, extra_body={"ignore_eos": True},
    )
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received >= 3:
            break
    busy = _worker_load(stack)
    assert busy.running + busy.waiting >= 1
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        load = _worker_load(stack)
        if load.running + load.waiting == 0:
            break
        time.sleep(0.1)
    assert load.running + load.waiting == 0
    # The worker logged the abort under the client's request id, which travelled in gRPC metadata.
    log = (stack.logs / "worker0.log").read_text()
    deadline = time.monotonic() + 10
    while f"aborted engine request {rid}" not in log and time.monotonic() < deadline:
        time.sleep(0.2)
        log = (stack.logs / "worker0.log").read_text()
    assert f"aborted engine request {rid}" in log
    assert f"[{rid}]" in log


def test_a_client_that_leaves_a_non_streamed_request_aborts_it(stack, base_url, api_key, model_name):
    """Without a stream the gateway still watches the connection: a client that gives up (a timeout, a batch
    runner that was stopped) aborts the engine's work instead of leaving it to run to the end."""
    import httpx

    rid = f"cancel-json-{time.time_ns()}"
    body = {"model": model_name, "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 900,
            "n": 8, "temperature": 1.0, "ignore_eos": True}
    with httpx.Client(timeout=httpx.Timeout(30, read=1.5)) as client:
        try:
            client.post(f"{base_url}/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {api_key}", "x-request-id": rid})
            raise AssertionError("8 × 900 tokens should take longer than the client waits")
        except httpx.ReadTimeout:
            pass  # the client gives up and closes the connection
    log_path = stack.logs / "worker0.log"
    deadline = time.monotonic() + 30
    while f"aborted engine request {rid}" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"aborted engine request {rid}" in log_path.read_text()
    deadline = time.monotonic() + 30
    while (load := _worker_load(stack)).running + load.waiting and time.monotonic() < deadline:
        time.sleep(0.1)
    assert load.running + load.waiting == 0
