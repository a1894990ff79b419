"""gRPC clients of the gateway and the call that runs one generation upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpcutil import insecure_channel, request_metadata
from services.common.identity import IdentityCodec
from services.common.mux import MuxChannel
from services.common.pb import auth_pb2_grpc, batches_pb2_grpc, responses_pb2_grpc, router_pb2_grpc
from services.common.pb import inference_pb2 as pb
from services.common.transport import CallTransport, ChunkStream, Transport

from .errors import APIError, from_grpc
from .usage_journal import UsageJournal
from .usage_reports import UsageReporter

_LIMITS_TTL_S = 5.0
_ROUTER_GENERATE = "/llmsvc.v1.Router/Generate"
_ROUTER_GENERATE_MANY = "/llmsvc.v1.Router/GenerateMany"


@dataclass
class Upstreams:
    """Channels and stubs, built at start-up and closed at shutdown."""

    router_channel: grpc.aio.Channel
    auth_channel: grpc.aio.Channel
    router: router_pb2_grpc.RouterStub
    auth: auth_pb2_grpc.AuthStub
    # Usage reports to auth, batched.
    usage_reports: UsageReporter
    # How generations reach the router: multiplexed over one Router.GenerateMany call, or one Generate
    # call each (services.common.transport).
    transport: Transport | None = None
    extra: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    # Signs the identity of each admitted request for the trainer and eval services (LLMSVC_INTERNAL_SECRET).
    identity: IdentityCodec = field(default_factory=IdentityCodec)
    # model id -> context window, refreshed from the router at most every _LIMITS_TTL_S.
    _limits: dict[str, int] = field(default_factory=dict)
    _limits_at: float = -1e9
    # Every model id the router listed at the last refresh: metric labels take only these.
    known_models: frozenset[str] = frozenset()
    # model id -> its owner as listed (owned_by: "llmsvc" for shared models), refreshed with the windows.
    model_owners: dict[str, str] = field(default_factory=dict)
    # The Responses API's stored responses (served by auth, on the shared database).
    responses: responses_pb2_grpc.ResponseStoreStub | None = None
    # Where a batch line's answer is recorded before it is sent back to the batch runner (auth, too).
    batch_results: batches_pb2_grpc.BatchResultsStub | None = None

    @classmethod
    def connect(cls, router_addr: str, auth_addr: str, multiplex: bool = True,
                journal_dir: Path | None = None) -> Upstreams:
        rc, ac = insecure_channel(router_addr), insecure_channel(auth_addr)
        transport = MuxChannel(rc, _ROUTER_GENERATE_MANY) if multiplex else CallTransport(rc, _ROUTER_GENERATE)
        auth = auth_pb2_grpc.AuthStub(ac)
        reporter = UsageReporter(auth, UsageJournal(journal_dir) if journal_dir else None)
        return cls(rc, ac, router_pb2_grpc.RouterStub(rc), auth, reporter, transport=transport,
                   responses=responses_pb2_grpc.ResponseStoreStub(ac),
                   batch_results=batches_pb2_grpc.BatchResultsStub(ac))

    async def healthy(self, timeout: float = 1.0) -> dict[str, bool]:
        async def check(channel: grpc.aio.Channel) -> bool:
            try:
                resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                return resp.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                return False

        router, auth = await asyncio.gather(check(self.router_channel), check(self.auth_channel))
        return {"router": router, "auth": auth}

    async def context_window(self, model: str) -> int | None:
        """The model's max_model_len as the workers report it (None if unknown or the router is down).

        Also refreshes the models' owners, which :meth:`check_owner` reads: at once for a name not seen yet (a
        version registered a moment ago must not answer another owner, whom the router would start it for),
        else at most every few seconds."""
        unseen = model not in self.model_owners
        if model not in self._limits and (unseen or time.monotonic() - self._limits_at > _LIMITS_TTL_S):
            self._limits_at = time.monotonic()
            try:
                resp = await self.router.ListModels(pb.ListModelsRequest(), timeout=2.0, metadata=request_metadata())
                self._limits = {m.id: m.max_model_len for m in resp.models if m.max_model_len}
                self.known_models = frozenset(m.id for m in resp.models)
                self.model_owners = {m.id: m.owned_by for m in resp.models}
            except grpc.aio.AioRpcError:
                pass
        return self._limits.get(model)

    def check_owner(self, admission, model: str) -> None:
        """404 (as for a model that does not exist) when ``model`` is another owner's fine-tune."""
        owned_by = self.model_owners.get(model)
        if owned_by is not None and not admission.may_use(model, owned_by):
            raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                           code="model_not_found", param="model", headers=admission.headers)

    async def close(self) -> None:
        await self.usage_reports.drain()  # queued reports land before the auth channel closes
        if self.transport is not None:
            self.transport.close()
        for ch in (self.router_channel, self.auth_channel, *self.extra.values()):
            await ch.close()


class Generation:
    """One upstream Generate stream.

    :meth:`start` waits for the first chunk so that errors the worker raises up
    front (prompt too long, unknown model) become a proper HTTP status before
    any SSE bytes are sent. Iterating yields the first chunk, then the rest;
    chunks that piled up while the client or this process was busy come as one
    merged chunk (see :mod:`services.common.transport`), so a lagging stream costs one message,
    one parse and one SSE write per batch instead of per token, as vLLM's own
    server merges deltas a slow consumer has not taken yet. ``close`` cancels
    the gRPC call, which the router and worker see as a cancellation and which
    aborts the vLLM request.
    """

    def __init__(self, upstreams: Upstreams, request: pb.GenerateRequest, timeout_s: float) -> None:
        self.request = request
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._stream: ChunkStream = upstreams.transport.open(request, timeout_s)
        self._first: pb.GenerateChunk | None = None
        self.usage = pb.Usage()
        self.finished = False

    async def _next(self) -> pb.GenerateChunk | None:
        try:
            raw = await self._stream.next()
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, self.request.model) from None
        if raw is None:
            return None
        chunk = pb.GenerateChunk.FromString(raw)
        if chunk.finished:
            self.finished = True
            self.usage.CopyFrom(chunk.usage)
        return chunk

    async def start(self) -> None:
        self._first = await self._next()
        if self._first is None:
            raise APIError(502, "The worker closed the stream without output.", code="upstream_error")
        self.first_token_at = time.perf_counter()

    @property
    def model(self) -> str:
        """The model the worker reports serving this request ("" before the first chunk)."""
        return self._first.model if self._first is not None else ""

    async def chunks(self) -> AsyncIterator[pb.GenerateChunk]:
        """Yield every chunk (merged when several were waiting); raise :class:`APIError` if the stream breaks."""
        assert self._first is not None, "call start() first"
        yield self._first
        while not self.finished:
            chunk = await self._next()
            if chunk is None:
                raise APIError(502, "The stream from the worker ended early.", code="upstream_error")
            yield chunk

    def close(self) -> None:
        self._stream.close()
