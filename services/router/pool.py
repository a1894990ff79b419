"""The worker pool: channels, health and load of each worker, refreshed by polling.

A worker is routable when its gRPC health service says SERVING and its last
load poll succeeded. A failed call ejects it at once (:meth:`WorkerPool.mark_failed`);
the next successful poll re-admits it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge

from services.common.grpcutil import insecure_channel
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

HEALTHY = Gauge("llmsvc_router_worker_healthy", "1 when the worker is routable.", ["worker"])
WORKER_LOAD = Gauge("llmsvc_router_worker_load", "Running plus waiting requests as last reported, plus in-flight dispatches since.", ["worker"])


@dataclass(eq=False)
class Worker:
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.InferenceStub
    health: health_pb2_grpc.HealthStub
    healthy: bool = False
    load: pb.Load = field(default_factory=pb.Load)
    models: tuple[str, ...] = ()
    model_infos: tuple[pb.ModelInfo, ...] = ()
    # Requests this router has sent and not yet finished; counts between polls.
    in_flight: int = 0
    last_ok: float = 0.0

    @property
    def score(self) -> float:
        """Load used by least-load decisions: the larger of what the engine reported and what we sent."""
        return max(self.load.running + self.load.waiting, self.in_flight) + self.load.kv_cache_usage


class WorkerPool:
    def __init__(self, addresses: list[str], poll_interval_s: float = 0.5, poll_timeout_s: float = 2.0) -> None:
        self.workers: dict[str, Worker] = {}
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        for address in addresses:
            self.add(address)

    def add(self, address: str) -> Worker:
        if address not in self.workers:
            channel = insecure_channel(address)
            self.workers[address] = Worker(
                address, channel, pb_grpc.InferenceStub(channel), health_pb2_grpc.HealthStub(channel)
            )
        return self.workers[address]

    async def remove(self, address: str) -> None:
        worker = self.workers.pop(address, None)
        if worker is not None:
            try:
                HEALTHY.remove(address)
                WORKER_LOAD.remove(address)
            except KeyError:
                pass
            await worker.channel.close()

    def routable(self, model: str) -> list[Worker]:
        return [w for w in self.workers.values() if w.healthy and not w.load.draining and model in w.models]

    def knows_model(self, model: str) -> bool:
        return any(model in w.models for w in self.workers.values())

    def mark_failed(self, worker: Worker, why: str) -> None:
        if worker.healthy:
            log.warning("ejecting worker %s: %s", worker.address, why)
        worker.healthy = False
        HEALTHY.labels(worker.address).set(0)

    async def poll_once(self, worker: Worker) -> None:
        try:
            status = await worker.health.Check(
                health_pb2.HealthCheckRequest(service="llmsvc.v1.Inference"), timeout=self.poll_timeout_s
            )
            if status.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError("health is NOT_SERVING")
            load = await worker.stub.GetLoad(pb.GetLoadRequest(), timeout=self.poll_timeout_s)
            if tuple(load.models) != worker.models:
                listed = await worker.stub.ListModels(pb.ListModelsRequest(), timeout=self.poll_timeout_s)
                worker.model_infos = tuple(listed.models)
            worker.load, worker.models, worker.last_ok = load, tuple(load.models), time.monotonic()
            if not worker.healthy:
                log.info("admitting worker %s (models: %s)", worker.address, ", ".join(worker.models))
                self._changed.set()
            worker.healthy = True
        except (grpc.aio.AioRpcError, RuntimeError, asyncio.TimeoutError) as exc:
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            self.mark_failed(worker, why or type(exc).__name__)
        HEALTHY.labels(worker.address).set(int(worker.healthy))
        WORKER_LOAD.labels(worker.address).set(worker.score)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll_once(w) for w in list(self.workers.values())))

    async def _loop(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self.poll_interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def wait_changed(self, timeout: float) -> None:
        """Wait until a worker is admitted (used while no worker is routable)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        for worker in self.workers.values():
            await worker.channel.close()
