"""The eval service's view of a model: scoring and generation through the router.

Built-in suites speak gRPC to the router, the same hop user traffic takes after
the gateway, for two reasons: they send exact token ids (no re-tokenisation of
JSON strings), and system traffic does not spend a user key's rate limits.
Every response is checked: a model that returns non-finite logprobs or
malformed output raises :class:`ModelOutputError`, which fails the run.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass

import grpc

from services.common.grpcutil import insecure_channel, request_metadata
from services.common.pb import inference_pb2 as pb
from services.common.pb import router_pb2, router_pb2_grpc

# The worker reports a non-finite logprob as this sentinel (see services/worker/engine.py).
_NONFINITE = -9999.0


class ModelOutputError(RuntimeError):
    """The model answered, but with something no metric can be computed from."""


class UpstreamError(RuntimeError):
    """The router or worker refused or failed the request."""


@dataclass(slots=True)
class Generated:
    text: str
    finish_reason: str
    tokens: int


class ModelClient:
    def __init__(self, router_addr: str, timeout_s: float = 120.0) -> None:
        self.channel = insecure_channel(router_addr)
        self.router = router_pb2_grpc.RouterStub(self.channel)
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self.channel.close()

    async def served_models(self) -> dict[str, pb.ModelInfo]:
        resp = await self.router.ListModels(pb.ListModelsRequest(), timeout=10.0, metadata=request_metadata())
        return {m.id: m for m in resp.models}

    async def ensure_served(self, model: str, wait_s: float) -> router_pb2.EnsureServedResponse:
        """Have the router make ``model`` routable (starting a registered version no worker serves)."""
        try:
            return await self.router.EnsureServed(router_pb2.EnsureServedRequest(model=model, wait_s=wait_s),
                                                  timeout=wait_s + 30.0, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(f"{exc.code().name}: {exc.details()}") from None

    async def release(self, version: str) -> router_pb2.ReleaseVersionResponse:
        """Let the router stop ``version`` if it started it on demand and nothing else uses it."""
        return await self._unary(self.router.ReleaseVersion, router_pb2.ReleaseVersionRequest(version=version))

    async def max_model_len(self, model: str) -> int:
        info = (await self.served_models()).get(model)
        if info is None:
            raise UpstreamError(f"no worker serves '{model}'")
        return info.max_model_len

    async def tokenize(self, model: str, text: str, add_special_tokens: bool = False) -> list[int]:
        req = pb.TokenizeRequest(model=model, prompt=text, add_special_tokens=add_special_tokens)
        resp = await self._unary(self.router.Tokenize, req)
        return list(resp.tokens)

    async def tokenizer_info(self, model: str) -> pb.TokenizerInfoResponse:
        return await self._unary(self.router.TokenizerInfo, pb.TokenizerInfoRequest(model=model))

    async def _unary(self, method, req):
        try:
            return await method(req, timeout=self.timeout_s, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(f"{exc.code().name}: {exc.details()}") from None

    async def _stream(self, req: pb.GenerateRequest) -> list[pb.GenerateChunk]:
        req.request_id = req.request_id or f"eval-{uuid.uuid4().hex[:12]}"
        call = self.router.Generate(req, timeout=self.timeout_s, metadata=request_metadata(req.request_id))
        chunks = []
        try:
            async for chunk in call:
                chunks.append(chunk)
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(f"{exc.code().name}: {exc.details()}") from None
        except asyncio.CancelledError:
            call.cancel()  # the run was cancelled: abort the vLLM request too
            raise
        if not chunks or not chunks[-1].finished:
            raise ModelOutputError("the stream ended without a final chunk")
        return chunks

    async def prompt_logprobs(self, model: str, ids: list[int]) -> list[float]:
        """Logprob of each of ``ids[1:]`` given the tokens before it (len(ids) - 1 values)."""
        params = pb.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, seed=0)
        req = pb.GenerateRequest(model=model, prompt_token_ids=pb.TokenIds(ids=ids), params=params, priority=1)
        first = (await self._stream(req))[0]
        entries = list(first.prompt_logprobs)
        if len(entries) != len(ids):
            raise ModelOutputError(f"expected {len(ids)} prompt logprobs, got {len(entries)}")
        out = []
        for pos, (tid, e) in enumerate(zip(ids[1:], entries[1:], strict=True), start=1):
            if not e.has_logprob or e.token_id != tid:
                raise ModelOutputError(f"no logprob for prompt token {pos}")
            if not math.isfinite(e.logprob) or e.logprob <= _NONFINITE or e.logprob > 1e-4:
                raise ModelOutputError(f"the model returned an invalid logprob ({e.logprob}) at prompt token {pos}")
            out.append(float(e.logprob))
        return out

    async def generate(self, model: str, *, prompt: str | None = None, chat: list[dict] | None = None,
                       max_tokens: int = 64, stop: list[str] | None = None, seed: int = 0) -> Generated:
        """Greedy generation (temperature 0): the same answer every time."""
        params = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=seed, stop=stop or [])
        req = pb.GenerateRequest(model=model, params=params, priority=1)
        if chat is not None:
            req.chat.add_generation_prompt = True
            for m in chat:
                req.chat.messages.add(role=m["role"], content=m["content"])
        else:
            req.prompt = prompt or ""
        chunks = await self._stream(req)
        text = "".join(d.text for c in chunks for d in c.choices if d.index == 0)
        finish = next((d.finish_reason for c in reversed(chunks) for d in c.choices if d.finish_reason), "")
        return Generated(text=text, finish_reason=finish, tokens=chunks[-1].usage.completion_tokens)
