"""Fixtures for router tests: in-process stand-in workers and a real router, each on port 0.

The stand-ins (:mod:`services.router.standin`) implement the real Inference
gRPC service without an engine; they are used where the property under test
(which worker is chosen, retry, backpressure) does not depend on a model.
"""

from __future__ import annotations

import contextlib

from services.common.pb import inference_pb2 as pb
from services.common.pb import router_pb2_grpc
from services.common.grpcutil import insecure_channel
from services.router.config import RouterSettings
from services.router.main import start_router
from services.router.standin import start_standin


@contextlib.asynccontextmanager
async def router_over(n_workers: int, standin_options: dict | None = None, **settings):
    """``n_workers`` stand-ins and a router over them; yields (stub, router, standins)."""
    standins = [await start_standin(**(standin_options or {})) for _ in range(n_workers)]
    base = {"host": "127.0.0.1", "port": 0, "poll_interval_s": 0.05, "readmit_checks": 1}
    cfg = RouterSettings(workers=[s.address for s in standins], **(base | settings))
    router = await start_router(cfg)
    channel = insecure_channel(f"127.0.0.1:{router.port}")
    try:
        await wait_routable(router, "standin", n_workers)
        yield router_pb2_grpc.RouterStub(channel), router, standins
    finally:
        await channel.close()
        await router.close()
        for s in standins:
            await s.server.stop(0)


async def wait_routable(router, model: str, n: int, timeout_s: float = 10.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(router.servicer.pool.routable(model)) != n:
        assert loop.time() < deadline, f"expected {n} routable workers"
        await asyncio.sleep(0.02)


def chat(text: str, user: str = "", session_id: str = "", max_tokens: int = 2, priority: int = 0) -> pb.GenerateRequest:
    req = pb.GenerateRequest(model="standin", user=user, session_id=session_id, priority=priority,
                             params=pb.SamplingParams(max_tokens=max_tokens))
    req.chat.messages.add(role="user", content=text)
    return req


async def generate(stub, request: pb.GenerateRequest, timeout: float = 10.0) -> list[pb.GenerateChunk]:
    return [c async for c in stub.Generate(request, timeout=timeout)]


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for ``predicate()`` (a condition, not a timing claim); fail after ``timeout_s``."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
