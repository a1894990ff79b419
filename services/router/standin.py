"""A lightweight stand-in for a worker: the real ``llmsvc.v1.Inference`` gRPC service, no engine.

For tests and benchmarks of routing, failover and gateway overhead, where the
property under test does not depend on what a model computes: it streams
``max_tokens`` canned tokens (``tok0 tok1 …``), optionally with a delay per
token, reports the load it is told (or its own count of active streams), and
can be told to fail before or after its first token. Every real test of the
engine itself runs real vLLM workers instead.

``python -m services.router.standin --port 50060 --model tiny-random`` runs one
(it returns tokens at once: the gateway-overhead benchmark's upstream).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, field

import grpc

from services.common.grpcutil import build_server, set_serving
from services.common.mux import MuxSession, StreamAbort, single_stream, stream_timeout
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc

SERVICE = "llmsvc.v1.Inference"
MAX_MODEL_LEN = 1024


@dataclass
class Seen:
    request: pb.GenerateRequest
    time_remaining: float | None
    metadata: dict[str, str]


@dataclass
class StandinInference(pb_grpc.InferenceServicer):
    models: list[str] = field(default_factory=lambda: ["standin"])
    default_tokens: int = 8
    token_delay_s: float = 0.0
    # Reported load; None reports the number of streams open right now as running.
    running: int | None = None
    waiting: int = 0
    kv_cache_usage: float = 0.0
    draining: bool = False
    fail_before_first: grpc.StatusCode | None = None
    break_after_tokens: int | None = None
    seen: list[Seen] = field(default_factory=list)
    active: int = 0

    # Serve GenerateMany and say so in GetLoad (the router then multiplexes its streams to this stand-in).
    multiplex: bool = True
    mux_calls: int = 0

    async def _chunks(self, request: pb.GenerateRequest):
        """The reply's chunks, for Generate and for each stream of GenerateMany; raises StreamAbort."""
        if request.model not in self.models:
            raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"The model '{request.model}' does not exist on this worker.")
        if self.fail_before_first is not None:
            raise StreamAbort(self.fail_before_first, "stand-in told to fail before the first token")
        n = request.params.max_tokens or self.default_tokens
        if n + 4 > MAX_MODEL_LEN:  # as a real worker does: the prompt (4 "tokens" here) plus the completion
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"This model's maximum context length is "
                              f"{MAX_MODEL_LEN} tokens; {n + 4} were requested.", {"param": "max_tokens"})
        self.active += 1
        try:
            for i in range(n):
                if self.break_after_tokens is not None and i >= self.break_after_tokens:
                    raise StreamAbort(grpc.StatusCode.UNAVAILABLE, "stand-in told to break mid-stream")
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                chunk = pb.GenerateChunk(request_id=request.request_id, model=self.models[0])
                last = i == n - 1
                chunk.choices.add(index=0, text=f"tok{i} ", token_ids=[i % 100], finish_reason="length" if last else "")
                if last:
                    chunk.finished = True
                    chunk.usage.prompt_tokens, chunk.usage.completion_tokens = 4, n
                yield chunk
        finally:
            self.active -= 1

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        self.seen.append(Seen(request, context.time_remaining(), dict(context.invocation_metadata() or ())))
        async for chunk in single_stream(self._chunks(request), context):
            yield chunk

    async def GenerateMany(self, request_iterator, context: grpc.aio.ServicerContext):
        if not self.multiplex:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this stand-in serves Generate only")
        self.mux_calls += 1

        async def chunks(request: pb.GenerateRequest):
            self.seen.append(Seen(request, stream_timeout.get(), {"x-request-id": request.request_id}))
            async for chunk in self._chunks(request):
                yield chunk

        async for batch in MuxSession(chunks, lambda: self.draining, "standin").run(request_iterator):
            yield batch

    async def GetLoad(self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext) -> pb.Load:
        running = self.active if self.running is None else self.running
        return pb.Load(running=running, waiting=self.waiting, kv_cache_usage=self.kv_cache_usage, models=self.models,
                       draining=self.draining, multiplex=self.multiplex)

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        # As a worker lists them: its version first, then its aliases with the version as their parent.
        return pb.ListModelsResponse(models=[pb.ModelInfo(id=m, root=m, max_model_len=MAX_MODEL_LEN, owned_by="llmsvc",
                                                          parent=self.models[0] if i else "")
                                             for i, m in enumerate(self.models)])

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext):
        ids = list(request.prompt.encode())
        return pb.TokenizeResponse(tokens=ids, count=len(ids), max_model_len=MAX_MODEL_LEN)

    async def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext):
        return pb.DetokenizeResponse(prompt=bytes(t % 256 for t in request.tokens).decode(errors="replace"))


@dataclass
class Standin:
    server: grpc.aio.Server
    servicer: StandinInference
    port: int
    health: object

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        await set_serving(self.health, [SERVICE], serving)


async def start_standin(port: int = 0, **options) -> Standin:
    servicer = StandinInference(**options)
    server, health = build_server("standin", [(pb_grpc.add_InferenceServicer_to_server, servicer, SERVICE)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await set_serving(health, [SERVICE], True)
    return Standin(server, servicer, bound, health)


def main() -> None:
    # Defaults from the worker's own variables, so Stack can spawn it in a worker's place.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMSVC_WORKER_PORT", "50060")))
    parser.add_argument("--model", default=os.environ.get("LLMSVC_WORKER_SERVED_MODEL_NAME", "standin"))
    parser.add_argument("--tokens", type=int, default=16, help="tokens per reply when max_tokens is unset")
    parser.add_argument("--token-delay-ms", type=float,
                        default=float(os.environ.get("LLMSVC_STANDIN_TOKEN_DELAY_MS", "0")),
                        help="pause before each token, like an engine step")
    args = parser.parse_args()

    async def run() -> None:
        standin = await start_standin(args.port, models=[args.model], default_tokens=args.tokens,
                                      token_delay_s=args.token_delay_ms / 1000)
        await standin.server.wait_for_termination()

    asyncio.run(run())


if __name__ == "__main__":
    main()
