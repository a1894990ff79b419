"""gRPC ``llmsvc.v1.Router``: admit, choose a worker, proxy the stream, retry before the first token."""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import Counter

from services.common.grpcutil import request_metadata
from services.common.mux import MuxSession, StreamContext, stream_timeout
from services.common.pb import inference_pb2 as pb
from services.common.pb import router_pb2, router_pb2_grpc

from .adapters import Adapter, AdapterCatalog, FullVersion, norm_path
from .admission import AdmissionControl, Rejected
from .ondemand import ModelLoading, NoCapacity, OnDemand, StartFailed
from .policies import PolicyTable, RoutingPolicy
from .pool import Worker, WorkerPool

log = logging.getLogger(__name__)

ROUTED = Counter("llmsvc_router_decisions_total", "Routing decisions by policy, model and outcome.",
                 ["policy", "model", "outcome"])
RETRIES = Counter("llmsvc_router_retries_total", "Requests retried on another worker before their first token.",
                  ["model"])

# Codes that mean "this worker could not serve it", as opposed to "the request is bad".
# CANCELLED here comes from the worker (a stop past its grace); our own caller's cancellation is a CancelledError.
# UNKNOWN is left out on purpose: it is an exception raised while serving this one request, so the same
# request would fail the same way elsewhere; ejecting and retrying would let one bad request empty the pool.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
# How long a request waits for a worker to become routable before it is refused.
_NO_WORKER_WAIT_S = 5.0


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, pool: WorkerPool, policies: PolicyTable, admission: AdmissionControl,
                 max_attempts: int = 2, adapters: AdapterCatalog | None = None,
                 ondemand: OnDemand | None = None) -> None:
        self.pool = pool
        self.adapters = adapters
        self.ondemand = ondemand if adapters is not None else None  # the registry says what can be started
        self.policies = policies
        self.admission = admission
        self.max_attempts = max(1, max_attempts)
        # Set on SIGTERM: multiplexed calls refuse new streams and end once theirs have finished.
        self.draining = False
        self._behind: dict[str, asyncio.Task] = {}
        """Versions being started behind an alias a worker of another version still answers to."""

    async def _candidates(self, model: str, policy: str, context: grpc.aio.ServicerContext) -> list[Worker]:
        workers = self.pool.routable(model)
        if not workers and self.pool.knows_model(model):
            await self.pool.wait_changed(min(_NO_WORKER_WAIT_S, context.time_remaining() or _NO_WORKER_WAIT_S))
            workers = self.pool.routable(model)
        if not workers:
            if self.pool.knows_model(model):
                ROUTED.labels(policy, model, "no_worker").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"No healthy worker is serving '{model}' right now.")
            ROUTED.labels(policy, model, "unknown_model").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model '{model}' does not exist.")
        return workers

    async def _served_as(self, request, context: grpc.aio.ServicerContext) -> str:
        """The model name workers serve this request under: its own; a registered full version's id when no
        worker answers to the name (the version is started on demand if none serves it); or, when it names a
        LoRA adapter version (or an alias of one), its base's, with the adapter attached to ``request``."""
        if hasattr(request, "adapter"):
            request.ClearField("adapter")  # only the registry says which folder a worker loads
        if self.adapters is None:
            return request.model
        # The registry first (cached): an alias moved to an adapter wins over a worker still claiming it.
        found = await self.adapters.lookup(request.model)
        if isinstance(found, FullVersion):
            # A worker knows the version by its id (or by its own name for the same folder) only: name it so.
            served = request.model = (self._existing(found, request.model)
                                      or await self._ensure(found, request.model, context))
            if self.ondemand is not None:
                self.ondemand.touch(served)
            return served
        if not isinstance(found, Adapter):
            return request.model
        base = await self._base_of(found, context)
        if hasattr(request, "adapter"):  # unary calls (tokenize) carry none: the base's tokenizer serves
            request.adapter.name, request.adapter.path = found.name, found.path
        return base

    def _existing(self, found: FullVersion, asked: str) -> str | None:
        """The name a running worker serves a registered full version under (asked for as ``asked``): the name
        itself when a worker claims it, or the name of a worker serving its folder; None when it must be started
        (without an on-demand starter, the name itself: the pool says unknown or unavailable).

        An alias follows the registry, as an adapter's does: a worker that still answers to it for another
        version (the chart's worker Deployment, which takes its aliases from its environment at every start;
        one being replaced) is not the alias's once the registry moved it. That worker serves the alias only
        while the version it points at starts (started here, without waiting), so a promotion moves what the
        alias serves in a cluster too, with no request refused in between."""
        if self.ondemand is None:
            return asked
        version = self.pool.base_name(frozenset({found.name}), frozenset({norm_path(found.path)}))
        if asked == found.name:
            return asked if self.pool.claims(asked) else version
        if version is not None and self.pool.routable(version):
            return version
        if self.pool.routable(asked):
            self._start_behind(found)
            return asked
        return None

    def _start_behind(self, found: FullVersion) -> None:
        """Start ``found`` without waiting for it (requests go elsewhere meanwhile); one start at a time."""
        if found.name in self.ondemand.started or found.name in self._behind:
            return

        async def start() -> None:
            try:
                await self.ondemand.ensure(found.name, found.path, 0.0)
            except (NoCapacity, StartFailed) as exc:
                log.warning("%s: not started behind its alias: %s", found.name, exc)
            finally:
                self._behind.pop(found.name, None)

        self._behind[found.name] = asyncio.get_running_loop().create_task(start())

    async def _base_of(self, adapter: Adapter, context) -> str:
        """The name a worker of the adapter's base serves it under; a registered full base is started."""
        base = self.pool.base_name(adapter.base_names, adapter.base_paths)
        if base is None and self.ondemand is not None and isinstance(
                parent := await self.adapters.lookup(adapter.base), FullVersion):
            base = await self._ensure(parent, adapter.name, context)
        if base is None:
            ROUTED.labels("adapter", adapter.name, "no_base").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"The model '{adapter.name}' is a LoRA adapter of '{adapter.base}', "
                                "which no worker serves.")
        if self.ondemand is not None:
            self.ondemand.touch(base)
        return base

    async def _ensure(self, version: FullVersion, asked: str, context, wait_s: float | None = None) -> str:
        """Start ``version`` if no worker serves it and wait for it within the request's deadline; abort with
        UNAVAILABLE and what the gateway turns into 503 ``model_loading`` (or ``no_capacity``,
        ``model_load_failed``) when it is not ready in time."""
        remaining = context.time_remaining()
        wait = self.ondemand.load_wait_s if wait_s is None else wait_s
        if remaining is not None:
            wait = min(wait, max(0.0, remaining - 1.0))
        try:
            if await self.ondemand.ensure(version.name, version.path, wait):
                return version.name
        except NoCapacity as exc:
            await self._abort_loading(context, asked, exc, "no_capacity")
        except StartFailed as exc:
            ROUTED.labels("ondemand", asked, "start_failed").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc), trailing_metadata=(
                ("error-code", "model_load_failed"), ("retry-after", str(int(self.ondemand.retry_failed_s)))))
        await self._abort_loading(context, asked, self.ondemand.loading(version.name, asked), "model_loading")

    async def _abort_loading(self, context, asked: str, exc: ModelLoading, code: str) -> None:
        ROUTED.labels("ondemand", asked, code).inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc), trailing_metadata=(
            ("error-code", code), ("retry-after", str(exc.retry_after_s))))

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        """Yields serialized chunks (see :mod:`.wire`): one flat loop per token, nothing decoded."""
        policy = self.policies.for_model(request.model)
        served = await self._served_as(request, context)
        await self._candidates(served, policy.name, context)
        try:
            async with self.admission.slot(served, request.priority, context.time_remaining()):
                worker, stream, first = await self._open(request, served, policy, context)
                try:
                    if first is None:
                        return
                    tag = worker.tag
                    yield first + tag
                    while (raw := await stream.next()) is not None:
                        yield raw + tag
                except grpc.aio.AioRpcError as exc:
                    await self._fail_mid_stream(worker, exc, context)
                finally:
                    # Our caller may have gone away (CancelledError): cancel hop by hop so vLLM aborts.
                    stream.close()
                    worker.in_flight -= 1
        except Rejected as exc:
            ROUTED.labels(policy.name, request.model, "rejected").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                trailing_metadata=(("retry-after", str(exc.retry_after_s)),))

    async def GenerateMany(self, request_iterator, context: grpc.aio.ServicerContext):
        """Many Generate streams over one call (the gateway's transport; see :mod:`services.common.mux`):
        each runs :meth:`Generate` with its own deadline, and what all of them produced since the previous
        message goes as one message."""

        def one(request: pb.GenerateRequest):
            return self.Generate(request, StreamContext(stream_timeout.get()))

        async for batch in MuxSession(one, lambda: self.draining, "router").run(request_iterator):
            yield batch

    async def _open(self, request: pb.GenerateRequest, served: str, policy: RoutingPolicy,
                    context: grpc.aio.ServicerContext):
        """Start the stream on a worker and read its first chunk, retrying on another worker before it.

        Returns ``(worker, stream, first chunk bytes or None at once-ended)`` with ``worker.in_flight`` counted."""
        tried: set[str] = set()
        for attempt in range(self.max_attempts):
            workers = [w for w in await self._candidates(served, policy.name, context) if w.address not in tried]
            if not workers:
                break
            worker, outcome = policy.choose(workers, request)
            tried.add(worker.address)
            ROUTED.labels(policy.name, request.model, "retry" if attempt else outcome).inc()
            worker.in_flight += 1
            stream = worker.open_stream(request, context.time_remaining())
            try:
                return worker, stream, await stream.next()
            except grpc.aio.AioRpcError as exc:
                worker.in_flight -= 1
                code = exc.code()
                if code not in _RETRYABLE:  # the request's own fault, or its deadline: pass it through
                    await context.abort(code, exc.details() or code.name,
                                        trailing_metadata=tuple(exc.trailing_metadata() or ()))
                self.pool.mark_failed(worker, f"{code.name}: {exc.details()}")
                more = attempt + 1 < self.max_attempts
                if more:
                    RETRIES.labels(request.model).inc()
                log.warning("worker %s failed before the first token; %s", worker.address,
                            "retrying elsewhere" if more else "giving up")
            except BaseException:
                worker.in_flight -= 1
                stream.close()
                raise
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"No worker could serve '{request.model}'; tried {len(tried)}.")

    async def _fail_mid_stream(self, worker: Worker, exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext):
        """Tokens were sent: the request cannot be replayed, so end it with a clear error."""
        code = exc.code()
        if code in _RETRYABLE:
            self.pool.mark_failed(worker, f"{code.name} mid-stream: {exc.details()}")
            await context.abort(code, f"The worker serving this request failed after it had started "
                                      f"({code.name}: {exc.details()}); the output is incomplete.")
        await context.abort(code, exc.details() or code.name, trailing_metadata=tuple(exc.trailing_metadata() or ()))

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        seen: dict[str, pb.ModelInfo] = {}
        # Serving workers first: a draining worker's names (an alias just moved away from it) show only
        # when no serving worker has them.
        healthy = [w for w in self.pool.workers.values() if w.healthy]
        for worker in sorted(healthy, key=lambda w: w.load.draining):
            for info in worker.model_infos:
                seen.setdefault(info.id, info)
        owners, aliases = await self.adapters.owners() if self.adapters else ({}, {})
        registered = await self.adapters.all() if self.adapters else []
        # The rows just read name their owners: a version registered within the owners' cache time is never
        # listed as shared ("llmsvc"), which would let the gateway hand it to another owner.
        fresh = {r.name: r.owner for r in registered}
        owners = {**owners, **fresh, **{a: fresh[v] for a, v in aliases.items() if v in fresh}}
        if self.ondemand is not None:  # a full version no worker serves is started when asked for
            for full in registered:
                if isinstance(full, FullVersion) and full.name not in seen:
                    # Listed with no context length until a worker serves it under its id (the gateway and
                    # /tokenizer_info count only versions with one as served).
                    seen[full.name] = pb.ModelInfo(id=full.name, root=full.path, created=full.created)
        for adapter in registered:
            if not isinstance(adapter, Adapter):
                continue
            # Listed when a worker serves its base (or can start it): what a request to it would reach.
            base = self.pool.base_name(adapter.base_names, adapter.base_paths)
            if base is None and adapter.base in seen:
                base = adapter.base
            if base is not None and base in seen:
                seen.setdefault(adapter.name, pb.ModelInfo(id=adapter.name, root=adapter.path, parent=base,
                                                           max_model_len=seen[base].max_model_len,
                                                           created=adapter.created))
        for alias, version in aliases.items():  # an alias reaches what its version does
            if version in seen and alias not in seen:
                seen[alias] = pb.ModelInfo(id=alias, root=seen[version].root, parent=seen[version].parent or version,
                                           max_model_len=seen[version].max_model_len, created=seen[version].created)
        # owned_by: the owner (team) of a fine-tuned version and its aliases; "llmsvc" for shared models
        models = []
        for info in sorted(seen.values(), key=lambda m: m.id):
            listed = pb.ModelInfo()
            listed.CopyFrom(info)
            listed.owned_by = owners.get(info.id) or "llmsvc"
            models.append(listed)
        return pb.ListModelsResponse(models=models)

    async def _unary(self, method: str, request, context: grpc.aio.ServicerContext):
        served = await self._served_as(request, context)
        workers = await self._candidates(served, "unary", context)
        if served != request.model:  # an adapter's tokenizer is its base's
            request.model = served
        worker = min(workers, key=lambda w: w.score)
        try:
            return await getattr(worker.stub, method)(request, timeout=context.time_remaining(),
                                                      metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or exc.code().name,
                                trailing_metadata=tuple(exc.trailing_metadata() or ()))

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext):
        return await self._unary("Tokenize", request, context)

    async def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext):
        return await self._unary("Detokenize", request, context)

    async def TokenizerInfo(self, request: pb.TokenizerInfoRequest, context: grpc.aio.ServicerContext):
        return await self._unary("TokenizerInfo", request, context)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        """To the least loaded worker serving the model, in the model's admission queue; a worker that could
        not serve it (down, draining) is ejected and the call goes to another, as a stream before its first
        token does."""
        served = request.model = await self._served_as(request, context)
        await self._candidates(served, "embed", context)  # an unknown model is a 404 before it queues
        try:
            async with self.admission.slot(served, request.priority, context.time_remaining()):
                tried: set[str] = set()
                for attempt in range(self.max_attempts):
                    workers = [w for w in await self._candidates(served, "embed", context) if w.address not in tried]
                    if not workers:
                        break
                    worker = min(workers, key=lambda w: w.score)
                    tried.add(worker.address)
                    ROUTED.labels("embed", served, "retry" if attempt else "least_loaded").inc()
                    worker.in_flight += 1
                    try:
                        return await worker.stub.Embed(request, timeout=context.time_remaining(),
                                                       metadata=request_metadata())
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in _RETRYABLE:
                            await context.abort(exc.code(), exc.details() or exc.code().name,
                                                trailing_metadata=tuple(exc.trailing_metadata() or ()))
                        self.pool.mark_failed(worker, f"{exc.code().name}: {exc.details()}")
                        if attempt + 1 < self.max_attempts:
                            RETRIES.labels(served).inc()
                    finally:
                        worker.in_flight -= 1
        except Rejected as exc:
            ROUTED.labels("embed", served, "rejected").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                trailing_metadata=(("retry-after", str(exc.retry_after_s)),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"No worker could serve '{served}'; tried {len(tried)}.")

    async def EnsureServed(self, request: router_pb2.EnsureServedRequest, context: grpc.aio.ServicerContext):
        """For the eval service and the rollout: make a version routable (starting it on demand), waiting up to
        ``wait_s``. Not ready in time is an answer (``ready`` false), not an error."""
        found = await self.adapters.lookup(request.model) if self.adapters else None
        if isinstance(found, Adapter):
            served = await self._base_of(found, context)
            return router_pb2.EnsureServedResponse(served_as=served, ready=bool(self.pool.routable(served)))
        if isinstance(found, FullVersion) and self.ondemand is not None:
            existing = self._existing(found, request.model)
            # A worker that knows the version by its own id but cannot take requests now (ejected) is waited for
            # below, and the version started if that worker does not come back.
            if existing and (self.pool.routable(existing) or existing != found.name):
                return router_pb2.EnsureServedResponse(served_as=existing, ready=bool(self.pool.routable(existing)))
            running = found.name in self.ondemand.started or self.pool.claims(found.name)
            try:
                ready = await self.ondemand.ensure(found.name, found.path, request.wait_s)
            except NoCapacity as exc:
                await self._abort_loading(context, request.model, exc, "no_capacity")
            except StartFailed as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            return router_pb2.EnsureServedResponse(served_as=found.name, ready=ready,
                                                   started=not running and found.name in self.ondemand.started)
        if self.pool.knows_model(request.model):
            return router_pb2.EnsureServedResponse(served_as=request.model,
                                                   ready=bool(self.pool.routable(request.model)))
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            f"The model '{request.model}' is neither served nor a registered version this router "
                            "can start.")

    async def ReleaseVersion(self, request: router_pb2.ReleaseVersionRequest, context: grpc.aio.ServicerContext):
        if self.ondemand is None:
            return router_pb2.ReleaseVersionResponse(stopped=False, reason="this router starts no versions")
        stopped, reason = await self.ondemand.release(request.version)
        return router_pb2.ReleaseVersionResponse(stopped=stopped, reason=reason)

    async def ListWorkers(self, request: router_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext):
        resp = router_pb2.ListWorkersResponse()
        for w in self.pool.workers.values():
            resp.workers.add(address=w.address, healthy=w.healthy, load=w.load, in_flight=w.in_flight)
        return resp
