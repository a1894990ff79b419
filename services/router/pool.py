"""The worker pool: channels, health and load of each worker, refreshed by polling.

A worker is routable when its gRPC health service says SERVING, its last load
poll succeeded and it is not draining. A failed call ejects it at once
(:meth:`WorkerPool.mark_failed`); it is re-admitted after ``readmit_checks``
consecutive passing polls. Discovery (static, EndpointSlices, DNS) hands the
pool the current address set through :meth:`WorkerPool.sync`; a worker that
leaves the set stops getting requests at once, and its channel is closed when
its last in-flight stream ends, so leaving never cuts a stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge

from services.common.grpcutil import insecure_channel
from services.common.mux import MuxChannel
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.transport import CallTransport, ChunkStream

from .adapters import norm_path
from .wire import GENERATE, worker_tag

log = logging.getLogger(__name__)

HEALTHY = Gauge("llmsvc_router_worker_healthy", "1 when the worker is routable.", ["worker"])
WORKER_LOAD = Gauge("llmsvc_router_worker_load",
                    "Running plus waiting requests as last reported, plus in-flight dispatches since.", ["worker"])


@dataclass(eq=False)
class Worker:
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.InferenceStub
    health: health_pb2_grpc.HealthStub
    # One Generate call per stream (undecoded chunks), and the bytes that mark a chunk as served here (wire.py).
    calls: CallTransport | None = None
    tag: bytes = b""
    # Streams multiplexed over one GenerateMany call, used when the worker says it serves it (mux.py).
    mux: MuxChannel | None = None
    healthy: bool = False
    load: pb.Load = field(default_factory=pb.Load)
    models: tuple[str, ...] = ()
    model_infos: tuple[pb.ModelInfo, ...] = ()
    # Requests this router has sent and not yet finished; counts between polls.
    in_flight: int = 0
    # ``in_flight`` when the last load report arrived: what of that report was ours.
    in_flight_at_poll: int = 0
    last_ok: float = 0.0
    # Consecutive passing polls since the last failure.
    ok_streak: int = 0
    # Ever admitted: a new worker needs one passing poll, a re-admitted one ``readmit_checks``.
    seen_healthy: bool = False

    @property
    def queue(self) -> int:
        """Requests on the worker now, as best this router can tell between polls: other callers' share
        of the last report (what it counted beyond our own in-flight requests then) plus ours now.

        The report is up to a poll interval old. Taken as it is, it hides the requests that finished
        since (a worker that just emptied still looks busy) and, taken as a floor under our in-flight
        count, it sends every new request to whichever worker reported less, in bursts. Our own
        requests we count exactly, so only the other routers' (or clients') share comes from the report."""
        others = self.load.running + self.load.waiting - self.in_flight_at_poll
        return max(0, others) + self.in_flight

    def open_stream(self, request: pb.GenerateRequest, timeout_s: float | None) -> ChunkStream:
        """Start a Generate stream here: over the multiplexed call when the worker offers it, else its own call."""
        if self.mux is not None and self.load.multiplex:
            return self.mux.open(request, timeout_s)
        return self.calls.open(request, timeout_s)

    def close_streams(self) -> None:
        if self.mux is not None:
            self.mux.close()

    @property
    def score(self) -> float:
        """Load used by least-load decisions: ``queue``, ties broken by KV-cache usage (0..1)."""
        return self.queue + self.load.kv_cache_usage


class WorkerPool:
    def __init__(self, addresses: list[str], poll_interval_s: float = 0.5, poll_timeout_s: float = 2.0,
                 readmit_checks: int = 2, multiplex: bool = True) -> None:
        self.workers: dict[str, Worker] = {}
        self.multiplex = multiplex
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self.readmit_checks = max(1, readmit_checks)
        # Called with the address whenever a worker becomes routable (policies forget it, queues wake).
        self.on_admit: list[Callable[[str], None]] = []
        # Called with a worker's models whenever a poll finds its model list changed (first poll included).
        self.on_models: list[Callable[[tuple[str, ...]], None]] = []
        self._retiring: list[Worker] = []
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        for address in addresses:
            self.add(address)

    def add(self, address: str) -> Worker:
        if address not in self.workers:
            channel = insecure_channel(address)
            self.workers[address] = Worker(
                address, channel, pb_grpc.InferenceStub(channel), health_pb2_grpc.HealthStub(channel),
                calls=CallTransport(channel, GENERATE), tag=worker_tag(address),
                mux=MuxChannel(channel, "/llmsvc.v1.Inference/GenerateMany") if self.multiplex else None,
            )
            log.info("discovered worker %s", address)
        return self.workers[address]

    def sync(self, addresses: set[str]) -> None:
        """Make the pool's address set equal ``addresses`` (from discovery)."""
        for address in addresses - self.workers.keys():
            self.add(address)
        for address in self.workers.keys() - addresses:
            self.retire(address)

    def retire(self, address: str) -> None:
        """Stop routing to ``address`` now; close its channel once its streams have ended."""
        worker = self.workers.pop(address, None)
        if worker is None:
            return
        log.info("worker %s left discovery; retiring after %d in-flight streams", address, worker.in_flight)
        worker.healthy = False
        for gauge in (HEALTHY, WORKER_LOAD):
            try:
                gauge.remove(address)
            except KeyError:
                pass
        self._retiring.append(worker)

    async def _close_retired(self) -> None:
        done = [w for w in self._retiring if w.in_flight <= 0]
        self._retiring = [w for w in self._retiring if w.in_flight > 0]
        for worker in done:
            worker.close_streams()
            await worker.channel.close()

    def routable(self, model: str) -> list[Worker]:
        return [w for w in self.workers.values() if w.healthy and not w.load.draining and model in w.models]

    def knows_model(self, model: str) -> bool:
        return any(model in w.models for w in self.workers.values())

    def claims(self, model: str, stale_s: float = 30.0) -> bool:
        """A worker serves ``model``, or did within ``stale_s`` (ejected for a moment, it may come back): a
        dead worker's names stop counting, so its version can be started again. A draining worker (a rollout
        moved its alias away, or it is stopping) never serves again: it claims nothing."""
        now = time.monotonic()
        return any(model in w.models and not w.load.draining and (w.healthy or now - w.last_ok < stale_s)
                   for w in self.workers.values())

    def forget(self, model: str) -> None:
        """A worker serving ``model`` was stopped on purpose: route nothing more to it and let its names go."""
        for w in self.workers.values():
            if w.models and w.models[0] == model:
                w.healthy, w.models, w.model_infos, w.ok_streak = False, (), (), 0

    def base_name(self, names: frozenset[str], paths: frozenset[str]) -> str | None:
        """The name workers serve a base model by, given its registry names and its folder(s); None if no
        worker (healthy or not) serves it. Serving workers are preferred, so a draining one's name is not."""
        for worker in sorted(self.workers.values(), key=lambda w: (not w.healthy, w.load.draining)):
            if not worker.models:
                continue
            if any(i.task for i in worker.model_infos):
                continue  # an embedding worker serving the same folder cannot serve generation or adapters
            if names.intersection(worker.models) or any(norm_path(i.root) in paths for i in worker.model_infos):
                return worker.models[0]
        return None

    def mark_failed(self, worker: Worker, why: str) -> None:
        if worker.healthy:
            log.warning("ejecting worker %s: %s", worker.address, why)
        worker.healthy = False
        worker.ok_streak = 0
        HEALTHY.labels(worker.address).set(0)

    async def _check(self, worker: Worker) -> None:
        status = await worker.health.Check(
            health_pb2.HealthCheckRequest(service="llmsvc.v1.Inference"), timeout=self.poll_timeout_s
        )
        if status.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError("health is NOT_SERVING")
        load = await worker.stub.GetLoad(pb.GetLoadRequest(), timeout=self.poll_timeout_s)
        ours = worker.in_flight  # as the report arrives, before any other await
        changed = tuple(load.models) != worker.models
        if changed:
            listed = await worker.stub.ListModels(pb.ListModelsRequest(), timeout=self.poll_timeout_s)
            worker.model_infos = tuple(listed.models)
        worker.load, worker.models, worker.last_ok = load, tuple(load.models), time.monotonic()
        worker.in_flight_at_poll = ours
        if changed:
            for callback in self.on_models:
                callback(worker.models)

    async def poll_once(self, worker: Worker) -> None:
        try:
            await self._check(worker)
        except (TimeoutError, grpc.aio.AioRpcError, RuntimeError) as exc:
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            self.mark_failed(worker, why or type(exc).__name__)
        else:
            worker.ok_streak += 1
            needed = self.readmit_checks if worker.seen_healthy else 1
            if not worker.healthy and worker.ok_streak >= needed and self.workers.get(worker.address) is worker:
                self._admit(worker)
        HEALTHY.labels(worker.address).set(int(worker.healthy))
        WORKER_LOAD.labels(worker.address).set(worker.score)

    def _admit(self, worker: Worker) -> None:
        log.info("admitting worker %s (models: %s)", worker.address, ", ".join(worker.models))
        worker.healthy = worker.seen_healthy = True
        for callback in self.on_admit:
            callback(worker.address)
        self._changed.set()

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll_once(w) for w in list(self.workers.values())))
        await self._close_retired()

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
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        for worker in [*self.workers.values(), *self._retiring]:
            worker.close_streams()
            await worker.channel.close()
