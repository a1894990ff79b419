"""The token path's transport, as one typed interface: open a generation stream, read its chunks, learn how
it ended, cancel it.

The gateway (to the router) and the router (to each worker) use nothing else. Two implementations:

* :class:`services.common.mux.MuxChannel`, the production one: every stream over one ``GenerateMany`` call
  to the server, one message per engine step for all of them (see the protocol in ``inference.proto``).
* :class:`CallTransport`: one ``Generate`` call per stream, for servers without ``GenerateMany`` and where
  multiplexing is turned off (``LLMSVC_GATEWAY_MULTIPLEX``, ``LLMSVC_ROUTER_MULTIPLEX``).

Both hand over the chunks that piled up while the reader was busy as one message (their serialized bytes
concatenated, which protobuf decodes as their merge), end a stream with EOF or its own status as a
``grpc.aio.AioRpcError`` (a broken call fails every stream on it, as it would fail separate calls), and
cancel hop by hop, which aborts the request in vLLM.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from .grpcutil import request_metadata
from .pb import inference_pb2 as pb
from .relay import Relay


class ChunkStream(Protocol):
    async def next(self) -> bytes | None:
        """The serialized chunks that arrived since the last call, as one message; None at the end; raises
        the stream's status (``grpc.aio.AioRpcError``) once what came before it has been taken."""

    def cancel(self) -> bool:
        """Stop the stream here and upstream; False if it had already ended."""

    def done(self) -> bool: ...

    def close(self) -> None:
        """Release it: cancels it if it is still running."""


class Transport(Protocol):
    def open(self, request: pb.GenerateRequest, timeout_s: float | None) -> ChunkStream: ...

    def close(self) -> None: ...


class CallStream(Relay):
    """One Generate call as a :class:`ChunkStream` (its messages read in a task of their own)."""

    def cancel(self) -> bool:
        return self._call.cancel()

    def done(self) -> bool:
        return self._call.done()

    def close(self) -> None:
        super().close()
        if not self._call.done():
            self._call.cancel()


class CallTransport:
    """A ``Generate`` call per stream, its chunks left undecoded (``method``: the call's full name)."""

    def __init__(self, channel: grpc.aio.Channel, method: str) -> None:
        self._generate = channel.unary_stream(method, request_serializer=pb.GenerateRequest.SerializeToString,
                                              response_deserializer=None)

    def open(self, request: pb.GenerateRequest, timeout_s: float | None) -> CallStream:
        return CallStream(self._generate(request, timeout=timeout_s, metadata=request_metadata(request.request_id)))

    def close(self) -> None:
        pass  # its calls end with their streams; the channel is the owner's to close
