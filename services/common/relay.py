"""Relay: read a gRPC stream of serialized messages in its own task and hand over what piled up as one.

Used on the token path wherever a process passes a stream on (the router to the gateway, the gateway
to its HTTP client). Concatenated serialized protobuf messages decode as their merge, so chunks that
arrived while the consumer was busy go on as one message: repeated fields (``choices``) appended in
order, singular ones (``finished``, ``usage``) from the last chunk that set them.
"""

from __future__ import annotations

import asyncio

import grpc


class Inbox:
    """Messages that arrived and not yet taken, handed over together as one; then the end, or an error.

    The receiving half of both a :class:`Relay` and a multiplexed stream (``services.common.mux``)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ready = asyncio.Event()
        self._ended = False
        self._error: grpc.aio.AioRpcError | None = None

    def _put(self, data: bytes) -> None:
        self._parts.append(data)
        self._ready.set()

    def _finish(self, error: grpc.aio.AioRpcError | None = None) -> None:
        """No more messages: the end, or ``error`` after what came before it (the first end wins)."""
        if not self._ended:
            self._ended, self._error = True, error
            self._ready.set()

    async def next(self) -> bytes | None:
        """What arrived since the last call, as one message (their merge); None at the end; raises the
        stream's error once what came before it has been taken."""
        while not self._parts:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._ready.clear()
            await self._ready.wait()
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        return data


class Relay(Inbox):
    """Reads a stream in its own task and hands over everything that has arrived as one message.

    While the next hop keeps up, that is one chunk per read, as before. When it falls behind (the
    engine is faster than the consumer, or the CPU is contended) the chunks that piled up go out
    as one message: their concatenated bytes, which protobuf decodes as the merge of the chunks
    (repeated ``choices`` appended in order, the last ``finished``/``usage`` kept). Fewer messages
    per token then cost less on every later hop, which is when it matters.
    """

    def __init__(self, call) -> None:
        super().__init__()
        self._call = call
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        error = None
        try:
            while (raw := await self._call.read()) is not grpc.aio.EOF:
                self._put(raw)
        except grpc.aio.AioRpcError as exc:
            error = exc
        finally:
            self._finish(error)

    def close(self) -> None:
        self._task.cancel()

