"""gRPC ``llmsvc.v1.Router``: choose a worker, proxy the stream, retry before the first token."""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import Counter

from services.common.grpcutil import request_metadata
from services.common.pb import inference_pb2 as pb
from services.common.pb import router_pb2
from services.common.pb import router_pb2_grpc

from .policies import RoutingPolicy
from .pool import Worker, WorkerPool

log = logging.getLogger(__name__)

ROUTED = Counter("llmsvc_router_decisions_total", "Routing decisions by policy, model and outcome.", ["policy", "model", "outcome"])
RETRIES = Counter("llmsvc_router_retries_total", "Requests retried on another worker before their first token.", ["model"])

# Codes that mean "this worker could not serve it", as opposed to "the request is bad".
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}
# How long a request waits for a worker to become routable before it is refused.
_NO_WORKER_WAIT_S = 5.0


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, pool: WorkerPool, policy: RoutingPolicy, max_attempts: int = 2) -> None:
        self.pool = pool
        self.policy = policy
        self.max_attempts = max(1, max_attempts)

    async def _candidates(self, model: str, context: grpc.aio.ServicerContext) -> list[Worker]:
        workers = self.pool.routable(model)
        if not workers and self.pool.knows_model(model):
            await self.pool.wait_changed(min(_NO_WORKER_WAIT_S, context.time_remaining() or _NO_WORKER_WAIT_S))
            workers = self.pool.routable(model)
        if not workers:
            if self.pool.knows_model(model):
                ROUTED.labels(self.policy.name, model, "no_worker").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"No healthy worker is serving '{model}' right now.")
            ROUTED.labels(self.policy.name, model, "unknown_model").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model '{model}' does not exist.")
        return workers

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        tried: set[str] = set()
        timeout = context.time_remaining()
        for attempt in range(self.max_attempts):
            workers = [w for w in await self._candidates(request.model, context) if w.address not in tried]
            if not workers:
                break
            worker = self.policy.choose(workers, request)
            tried.add(worker.address)
            ROUTED.labels(self.policy.name, request.model, "retry" if attempt else "routed").inc()
            started = False
            worker.in_flight += 1
            call = worker.stub.Generate(request, timeout=timeout, metadata=request_metadata(request.request_id))
            try:
                async for chunk in call:
                    started = True
                    chunk.worker = worker.address
                    yield chunk
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if started or code not in _RETRYABLE:
                    # Client errors pass through unchanged; mid-stream failures cannot be replayed.
                    context.set_trailing_metadata(tuple(exc.trailing_metadata() or ()))
                    await context.abort(code, exc.details() or code.name)
                self.pool.mark_failed(worker, f"{code.name}: {exc.details()}")
                log.warning("worker %s failed before first token (%s); %s", worker.address, code.name,
                            "retrying" if attempt + 1 < self.max_attempts else "giving up")
                if attempt + 1 < self.max_attempts:
                    RETRIES.labels(request.model).inc()
            finally:
                # Our caller may have gone away (CancelledError): cancel hop by hop so vLLM aborts.
                call.cancel()
                worker.in_flight -= 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"No worker could serve '{request.model}'; tried {len(tried)}.")

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        seen: dict[str, pb.ModelInfo] = {}
        for worker in self.pool.workers.values():
            if worker.healthy:
                for info in worker.model_infos:
                    seen.setdefault(info.id, info)
        return pb.ListModelsResponse(models=sorted(seen.values(), key=lambda m: m.id))

    async def _unary(self, method: str, request, context: grpc.aio.ServicerContext):
        workers = await self._candidates(request.model, context)
        worker = min(workers, key=lambda w: w.score)
        try:
            return await getattr(worker.stub, method)(request, timeout=context.time_remaining(), metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            context.set_trailing_metadata(tuple(exc.trailing_metadata() or ()))
            await context.abort(exc.code(), exc.details() or exc.code().name)

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext):
        return await self._unary("Tokenize", request, context)

    async def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext):
        return await self._unary("Detokenize", request, context)

    async def ListWorkers(self, request: router_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext):
        resp = router_pb2.ListWorkersResponse()
        for w in self.pool.workers.values():
            resp.workers.add(address=w.address, healthy=w.healthy, load=w.load, in_flight=w.in_flight)
        return resp
