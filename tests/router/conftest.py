"""Fixtures for router tests: in-process stand-in workers and a real router, each on port 0.

The stand-ins (:mod:`services.router.standin`) implement the real Inference
gRPC service without an engine; they are used where the property under test
(which worker is chosen, retry, backpressure) does not depend on a model.
"""

from __future__ import annotations

import contextlib

import pytest

from services.common.grpcutil import insecure_channel
from services.common.pb import inference_pb2 as pb
from services.common.pb import router_pb2_grpc
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


# -- a real two-worker stack, shared by the end-to-end modules of this folder ------------------------------------

# Router bounds small enough to overload on two cores: 2 workers × 6 in flight + 6 queued.
E2E_ROUTER_ENV = {"LLMSVC_ROUTER_MAX_IN_FLIGHT_PER_WORKER": "6", "LLMSVC_ROUTER_QUEUE_SIZE": "6",
                  "LLMSVC_ROUTER_QUEUE_TIMEOUT_S": "60", "LLMSVC_WORKER_GRACE_S": "60",
                  "VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="session")
def stack2(tmp_path_factory, default_model, api_key):
    """gateway → auth → router → two real vLLM workers, each its own process (``llmsvc up --workers 2``)."""
    from services.cli.stack import Stack, StackConfig

    cfg = StackConfig.ephemeral(tmp_path_factory.mktemp("stack2"), default_model, api_key, workers=2,
                                extra_env=E2E_ROUTER_ENV)
    with Stack(cfg).running() as s:
        # running() returns once the model is listed, which one ready worker is enough for; tests of this
        # fixture are about both, so wait until the router routes to two.
        import asyncio

        asyncio.run(wait_healthy(s, 2))
        yield s


async def router_workers(stack) -> list:
    """The router's view of its workers (ListWorkers over gRPC)."""
    from services.common.pb import router_pb2

    channel = stack.channel(stack.cfg.router_port)
    try:
        resp = await router_pb2_grpc.RouterStub(channel).ListWorkers(router_pb2.ListWorkersRequest(), timeout=5)
        return list(resp.workers)
    finally:
        await channel.close()


async def wait_healthy(stack, n: int, timeout_s: float = 240.0) -> None:
    """Until the router routes to ``n`` workers (a restarted vLLM worker takes 35–60 s on CPU)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while sum(w.healthy for w in await router_workers(stack)) != n:
        if dead := [p.name for p in stack.dead() if not p.name.startswith("worker")]:
            raise RuntimeError(f"{dead} exited; logs in {stack.logs}")
        assert loop.time() < deadline, f"router never saw {n} healthy workers"
        await asyncio.sleep(0.5)
