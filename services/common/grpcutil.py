"""gRPC helpers shared by every service: server assembly, request ids, shutdown.

Each service builds its server with :func:`build_server`, which adds the
standard ``grpc.health.v1`` and reflection services and the request-id
interceptor, then runs it with :func:`serve_until_signalled`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from .identity import SECRET_ENV, SERVICE_TOKEN_KEY, service_token
from .logging import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"

GRPC_REQUESTS = Counter(
    "llmsvc_grpc_requests_total",
    "gRPC calls handled, by service, method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "llmsvc_grpc_request_duration_seconds",
    "Time to complete a gRPC call (for streams: until the last message).",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def request_metadata(request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """Outgoing metadata that carries the current (or given) request id."""
    rid = request_id or request_id_var.get()
    return ((REQUEST_ID_KEY, rid),) if rid and rid != "-" else ()


def _code_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id from metadata and records count and latency per method, for every call kind."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        rid = dict(details.invocation_metadata or ()).get(REQUEST_ID_KEY, "-")
        service = self._service

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request_id_var.set(rid)
                start = time.perf_counter()
                try:
                    return await inner_uu(request, context)
                finally:
                    GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
                    GRPC_REQUESTS.labels(service, method, _code_of(context)).inc()

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request_id_var.set(rid)
                start = time.perf_counter()
                code = "OK"
                try:
                    async for item in inner_us(request, context):
                        yield item
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                finally:
                    GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
                    GRPC_REQUESTS.labels(service, method, code if code != "OK" else _code_of(context)).inc()

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                request_id_var.set(rid)
                start = time.perf_counter()
                try:
                    return await inner_su(requests, context)
                finally:
                    GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
                    GRPC_REQUESTS.labels(service, method, _code_of(context)).inc()

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                # A multiplexed call (GenerateMany) is counted as one call for as long as it stays open; its
                # streams are counted by the services' own metrics.
                request_id_var.set(rid)
                start = time.perf_counter()
                code = "OK"
                try:
                    async for item in inner_ss(requests, context):
                        yield item
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                finally:
                    GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
                    GRPC_REQUESTS.labels(service, method, code if code != "OK" else _code_of(context)).inc()

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


class InternalCallGuard(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call that lacks the deployment's service token, health checks aside:
    a pod that can open a service's port but does not hold the internal secret (a training or eval job, a
    stranger in the namespace) cannot call Admit, Generate, Drain, Promote or anything else."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc.health.v1.Health/"):
            return handler
        for key, value in details.invocation_metadata or ():
            if key == SERVICE_TOKEN_KEY and hmac.compare_digest(str(value), self._token):
                return handler
        return _refusal(handler, details.method)


def _refusal(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    message = (f"{method} is internal: the call carries no valid service token (services of one deployment "
               f"share {SECRET_ENV}).")

    async def deny(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # an async generator, as the streaming handler kinds need

    ser, de = handler.response_serializer, handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, de, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, de, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, de, ser)
    return grpc.stream_stream_rpc_method_handler(deny_stream, de, ser)


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if SERVICE_TOKEN_KEY not in metadata:
        metadata.add(SERVICE_TOKEN_KEY, token)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_token(details, self.token), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_token(details, self.token), request)


class _TokenStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_with_token(details, self.token), request_iterator)


class _TokenStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(_with_token(details, self.token), request_iterator)


def token_interceptors(token: str) -> list:
    """Client interceptors that add the service token to every call of a channel (none without a token)."""
    if not token:
        return []
    return [cls(token) for cls in (_TokenUnaryUnary, _TokenUnaryStream, _TokenStreamUnary, _TokenStreamStream)]


# One message size limit on every hop, both directions, servers and channels alike. gRPC's default lets a
# channel send any size but a server receive only 4 MiB: one large request then ended the whole multiplexed
# call it travelled on, and every other stream on it. The gateway caps bodies well below this
# (``max_body_bytes``) and a multiplexed stream refuses a larger request by itself (``services.common.mux``).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MESSAGE_LIMITS = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES))
# Our channels ping every 10 s, with or without calls (``insecure_channel``). gRPC's server default answers a
# ping more often than every 5 minutes without data with GOAWAY "too many pings", which fails a call that
# races it (the eval service's idle channel to the router did). Servers accept the pings their peers send.
PING_POLICY = (("grpc.http2.min_ping_interval_without_data_ms", 5_000), ("grpc.http2.max_ping_strikes", 0),
               ("grpc.keepalive_permit_without_calls", 1))


def build_server(
    service: str,
    servicers: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """Build a grpc.aio server with health, reflection and our interceptors.

    ``servicers`` holds ``(add_XServicer_to_server, servicer, full_service_name)``.
    Each named service starts NOT_SERVING; call ``set_serving`` once ready.
    """
    token = service_token()
    guard = [InternalCallGuard(token)] if token else []
    if not token:
        log.warning("%s is not set: %s accepts calls from anyone who can reach its port", SECRET_ENV, service)
    server = grpc.aio.server(
        interceptors=[*guard, ObservabilityInterceptor(service), *interceptors],
        options=[("grpc.so_reuseport", 0), *MESSAGE_LIMITS, *PING_POLICY, *options],
    )
    health_servicer = health.aio.HealthServicer()
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    for add, servicer, name in servicers:
        add(servicer, server)
        names.append(name)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str], serving: bool) -> None:
    """Flip the overall ("") status and each named service's status."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *names]:
        await health_servicer.set(name, status)


async def serve_until_signalled(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    names: Iterable[str],
    grace_s: float,
    on_drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain: health goes NOT_SERVING first so
    callers stop sending, in-flight calls get ``grace_s`` to finish, then stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", grace_s)
    await set_serving(health_servicer, names, False)
    if on_drain is not None:
        await on_drain()
    started = time.monotonic()
    await server.stop(grace_s)
    log.info("stopped after draining for %.1fs", time.monotonic() - started)


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop when present (it is, with uvicorn[standard]): about 15 %
    less CPU per streamed gRPC message than asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def insecure_channel(address: str, token: str | None = None) -> grpc.aio.Channel:
    """A channel with keepalive so that a dead peer is noticed within seconds, whose calls carry the
    deployment's service token (``token``; None: the one derived from ``LLMSVC_INTERNAL_SECRET``)."""
    return grpc.aio.insecure_channel(
        address,
        interceptors=token_interceptors(service_token() if token is None else token),
        options=[
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            *MESSAGE_LIMITS,
        ],
    )
