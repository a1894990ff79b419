"""The router's hot path on the wire: GenerateChunks pass through as bytes.

The router never needs to read a chunk, only to count it (retry is allowed
until the first one) and to say which worker served it. So it receives the
worker's chunks undecoded and sends them on undecoded, appending field 9
(``worker``) in protobuf's wire format: appending a field to a serialized
message is a valid encoding of the message with that field set (the worker
never sets it). This skips a parse and a serialize per token.
"""

from __future__ import annotations

import grpc

from services.common.pb import router_pb2_grpc

GENERATE = "/llmsvc.v1.Inference/Generate"
_WORKER_FIELD = 9  # GenerateChunk.worker


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def worker_tag(address: str) -> bytes:
    """``GenerateChunk.worker = address`` as bytes to append to a serialized chunk."""
    data = address.encode()
    return _varint(_WORKER_FIELD << 3 | 2) + _varint(len(data)) + data


class _Capture:
    """Stands in for a server to catch the generated method handlers of the Router service."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers = dict(handlers)


def add_router_servicer(servicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_RouterServicer_to_server``, but Generate sends bytes as they are."""
    capture = _Capture()
    router_pb2_grpc.add_RouterServicer_to_server(servicer, capture)
    handlers = capture.handlers
    generate = handlers["Generate"]
    handlers["Generate"] = grpc.unary_stream_rpc_method_handler(
        servicer.Generate, request_deserializer=generate.request_deserializer, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("llmsvc.v1.Router", handlers),))
    server.add_registered_method_handlers("llmsvc.v1.Router", handlers)
