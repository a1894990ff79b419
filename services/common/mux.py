"""``GenerateMany``: many Generate streams over one call (router → worker, gateway → router).

Every token of every request is a message on every hop when each request has its own stream, and on
Python gRPC a message costs tens of microseconds of CPU on each side. Over one ``GenerateMany`` call
the worker sends, per message, what *all* its open streams produced since the previous one: with 16
requests in an engine step that is one message instead of 16. Each stream keeps the semantics of its
own Generate call: a status at its end (code, details, trailing metadata), its own deadline, and
cancellation by the caller, which aborts the vLLM request.

:class:`MuxSession` serves one such call over a per-request generator, the same one that serves
plain ``Generate`` (see ``services.worker.servicer``), so the two cannot drift apart.
:class:`MuxChannel` is the calling side: it keeps one call open per server and reopens it when it ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from .grpcutil import GRPC_LATENCY, GRPC_REQUESTS, MAX_MESSAGE_BYTES, request_metadata
from .logging import request_id_var
from .pb import inference_pb2 as pb
from .relay import Inbox

log = logging.getLogger(__name__)

# Inside a stream's generator: the seconds its caller gave it (None: no deadline), as
# ``context.time_remaining()`` at the start of a plain Generate call.
stream_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("stream_timeout", default=None)


class StreamAbort(Exception):
    """End this stream with a gRPC status (the worker's per-request errors: bad input, unknown model …)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: dict[str, str] | None = None) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing or {}


# A request's chunks: messages, or already serialized (the router passes the worker's bytes on).
Generator = Callable[[pb.GenerateRequest], AsyncIterator[pb.GenerateChunk | bytes]]


async def single_stream(chunks: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
    """Serve ``chunks`` as one plain Generate call: a :class:`StreamAbort` becomes the call's status."""
    try:
        async for chunk in chunks:
            yield chunk
    except StreamAbort as exc:
        await context.abort(exc.code, exc.details, trailing_metadata=tuple(exc.trailing.items()))


class StreamContext:
    """What a servicer's Generate uses of its ``grpc.aio.ServicerContext``, for one stream of a GenerateMany
    call: the time left of the stream's own deadline, and ``abort``, which ends just this stream."""

    def __init__(self, timeout_s: float | None) -> None:
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise StreamAbort(code, details, {k: v for k, v in trailing_metadata})


class MuxSession:
    """One GenerateMany call: reads opens and cancels, runs each stream as a task, batches their output.

    ``generate`` yields a request's chunks or raises :class:`StreamAbort`. ``draining`` says when to
    refuse new streams; a draining session ends the call once its streams have finished. ``service``
    labels the per-stream ``Generate`` metrics, which count as they would for plain Generate calls.
    """

    def __init__(self, generate: Generator, draining: Callable[[], bool], service: str) -> None:
        self._generate = generate
        self._draining = draining
        self._service = service
        self._tasks: dict[int, asyncio.Task] = {}
        # Per stream, what it produced since the last message: chunk bytes, and its end status if it ended.
        self._pending: dict[int, tuple[list[bytes], list]] = {}
        self._wake = asyncio.Event()
        self._closed = False  # the caller half-closed its side

    async def run(self, requests: AsyncIterator[pb.MuxRequest]) -> AsyncIterator[pb.MuxResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                if self._pending:
                    pending, self._pending = self._pending, {}
                    yield pb.MuxResponse(frames=[_frame(sid, parts, end) for sid, (parts, end) in pending.items()])
                    continue
                self._wake.clear()
                if self._tasks:  # every push and every stream's end wakes us
                    await self._wake.wait()
                    continue
                if self._closed or self._draining():
                    return
                try:  # idle: the timeout only re-checks draining, which nothing signals
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                except TimeoutError:
                    pass
        finally:
            reader.cancel()
            for task in list(self._tasks.values()):
                task.cancel()

    async def _read(self, requests: AsyncIterator[pb.MuxRequest]) -> None:
        try:
            async for msg in requests:
                if msg.HasField("open"):
                    self._open(msg.open)
                elif (task := self._tasks.get(msg.cancel)) is not None:
                    task.cancel()
        except grpc.aio.AioRpcError:
            pass
        finally:
            self._closed = True
            self._wake.set()

    def _open(self, open_: pb.StreamOpen) -> None:
        sid = open_.stream_id
        if sid in self._tasks:
            self._end(sid, grpc.StatusCode.INVALID_ARGUMENT, f"stream id {sid} is already open")
        elif self._draining():
            self._end(sid, grpc.StatusCode.UNAVAILABLE, f"{self._service} is draining")
        else:
            self._tasks[sid] = asyncio.get_running_loop().create_task(self._stream(sid, open_))

    async def _stream(self, sid: int, open_: pb.StreamOpen) -> None:
        request_id_var.set(open_.request.request_id or "-")
        stream_timeout.set(open_.timeout_s if open_.timeout_s > 0 else None)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async with asyncio.timeout(open_.timeout_s if open_.timeout_s > 0 else None):
                async for chunk in self._generate(open_.request):
                    self._push(sid, chunk if isinstance(chunk, bytes) else chunk.SerializeToString())
            self._end(sid, code)
        except StreamAbort as exc:
            code = exc.code
            self._end(sid, exc.code, exc.details, exc.trailing)
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            self._end(sid, code, "Deadline Exceeded")
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller cancelled it: it expects nothing more
        except Exception as exc:  # as a plain Generate call would end on an unexpected error
            log.exception("stream %d failed", sid)
            code = grpc.StatusCode.UNKNOWN
            self._end(sid, code, f"Unexpected {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(sid, None)
            self._wake.set()
            GRPC_LATENCY.labels(self._service, "Generate").observe(time.perf_counter() - started)
            GRPC_REQUESTS.labels(self._service, "Generate", code.name).inc()

    def _out(self, sid: int) -> tuple[list[bytes], list]:
        out = self._pending.get(sid)
        if out is None:
            out = self._pending[sid] = ([], [])
            self._wake.set()
        return out

    def _push(self, sid: int, data: bytes) -> None:
        self._out(sid)[0].append(data)

    def _end(self, sid: int, code: grpc.StatusCode, details: str = "", trailing: dict[str, str] | None = None) -> None:
        self._out(sid)[1][:] = [code, details, trailing or {}]


def _frame(sid: int, parts: list[bytes], end: list) -> pb.StreamFrame:
    frame = pb.StreamFrame(stream_id=sid, chunks=parts[0] if len(parts) == 1 else b"".join(parts))
    if end:
        code, details, trailing = end
        frame.end, frame.code, frame.details = True, code.value[0], details
        frame.trailing.update(trailing)
    return frame


# -- the calling side ---------------------------------------------------------------------------------------

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str, trailing: dict[str, str] | None = None) -> grpc.aio.AioRpcError:
    """The error a plain Generate call would have raised with this status."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*(trailing or {}).items()), details)


class MuxStream(Inbox):
    """One request's stream over a GenerateMany call: what the callers use of a plain Generate call
    (``read``, ``cancel``, ``done``), ending the same way, with EOF or the stream's own status as a
    ``grpc.aio.AioRpcError``, or the whole call's error when the call breaks (a killed server fails every
    stream on it, as it would fail every separate call)."""

    def __init__(self, call: _MuxCall | None, sid: int) -> None:
        super().__init__()
        self._call = call
        self.sid = sid

    def _deliver(self, frame: pb.StreamFrame) -> None:
        if frame.chunks:
            self._put(frame.chunks)
        if frame.end:
            self._finish(rpc_error(_CODES.get(frame.code, grpc.StatusCode.UNKNOWN), frame.details,
                                   dict(frame.trailing)) if frame.code else None)

    async def read(self):
        """As ``grpc.aio`` calls read: the next message, or ``grpc.aio.EOF``."""
        data = await self.next()
        return grpc.aio.EOF if data is None else data

    def cancel(self) -> bool:
        if self._ended:
            return False
        self._finish(rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled"))
        if self._call is not None:
            self._call.cancel(self.sid)
        return True

    def done(self) -> bool:
        return self._ended

    def close(self) -> None:
        self.cancel()


class _MuxCall:
    """One GenerateMany call and the streams opened on it."""

    def __init__(self, method) -> None:
        self._queue: asyncio.Queue[pb.MuxRequest | None] = asyncio.Queue()
        self._streams: dict[int, MuxStream] = {}
        self.closed = False
        self._grpc_call = method(self._requests(), metadata=request_metadata())
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _requests(self):
        while (msg := await self._queue.get()) is not None:
            yield msg

    def open(self, sid: int, request: pb.GenerateRequest, timeout_s: float | None) -> MuxStream:
        stream = self._streams[sid] = MuxStream(self, sid)
        self._queue.put_nowait(pb.MuxRequest(open=pb.StreamOpen(stream_id=sid, request=request,
                                                                timeout_s=timeout_s or 0.0)))
        return stream

    def cancel(self, sid: int) -> None:
        if self._streams.pop(sid, None) is not None and not self.closed:
            self._queue.put_nowait(pb.MuxRequest(cancel=sid))

    async def _read(self) -> None:
        error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the server ended its multiplexed stream")
        try:
            async for batch in self._grpc_call:
                for frame in batch.frames:
                    stream = self._streams.get(frame.stream_id)
                    if stream is not None:
                        stream._deliver(frame)
                        if frame.end:
                            del self._streams[frame.stream_id]
        except grpc.aio.AioRpcError as exc:
            error = exc
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.CANCELLED, "the channel was closed")
            raise
        finally:
            self.closed = True
            for stream in self._streams.values():
                stream._finish(error)
            self._streams.clear()
            self._queue.put_nowait(None)

    def close(self) -> None:
        self._reader.cancel()
        self._grpc_call.cancel()


# The largest request a stream may open with: the hop's message limit less room for the frame around it.
MAX_OPEN_BYTES = MAX_MESSAGE_BYTES - 64 * 1024


class MuxChannel:
    """Streams to one server, multiplexed over a GenerateMany call that is reopened when it ends.

    ``method`` is the call's full name: ``/llmsvc.v1.Inference/GenerateMany`` (router → worker) or
    ``/llmsvc.v1.Router/GenerateMany`` (gateway → router)."""

    def __init__(self, channel: grpc.aio.Channel, method: str) -> None:
        self._method = channel.stream_stream(method, request_serializer=pb.MuxRequest.SerializeToString,
                                             response_deserializer=pb.MuxResponse.FromString)
        self._ids = itertools.count(1)
        self._call: _MuxCall | None = None

    def open(self, request: pb.GenerateRequest, timeout_s: float | None) -> MuxStream:
        if request.ByteSize() > MAX_OPEN_BYTES:
            # Sent, it would end the shared call and fail every stream on it: fail only this one.
            stream = MuxStream(None, 0)
            stream._finish(rpc_error(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"The request is too large ({request.ByteSize()} bytes; at most "
                                     f"{MAX_OPEN_BYTES}).", {"error-code": "request_too_large"}))
            return stream
        if self._call is None or self._call.closed:
            self._call = _MuxCall(self._method)
        return self._call.open(next(self._ids) & 0xFFFFFFFF, request, timeout_s)

    def close(self) -> None:
        if self._call is not None:
            self._call.close()
