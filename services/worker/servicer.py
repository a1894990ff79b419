"""gRPC ``llmsvc.v1.Inference`` on top of :class:`EngineHost`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal

import grpc

from services.common.mux import MuxSession, StreamAbort, single_stream
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc

from .engine import EngineHost, InvalidRequest

log = logging.getLogger(__name__)


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, host: EngineHost) -> None:
        self.host = host
        self.draining = False
        # Generate streams open right now; a drain waits for this to reach 0.
        self.active = 0

    async def _check_model(self, model: str, context: grpc.aio.ServicerContext) -> None:
        if model and not self.host.serves(model):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model '{model}' does not exist on this worker.")

    async def _chunks(self, request: pb.GenerateRequest):
        """One request's chunks, for Generate and for each stream of GenerateMany; raises StreamAbort."""
        # An adapter request names the adapter; the router sent it here because this worker serves its base.
        if request.model and not request.HasField("adapter") and not self.host.serves(request.model):
            raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"The model '{request.model}' does not exist on this worker.")
        if self.draining:
            raise StreamAbort(grpc.StatusCode.UNAVAILABLE, "worker is draining")
        if self.host.pooling:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"The model '{request.model or self.host.card.name}' is an embedding model: it serves "
                              "/v1/embeddings only.", {"param": "model", "error-code": "model_not_supported"})
        log.info("generate model=%s n=%d", request.model, request.params.n or 1)
        self.active += 1
        try:
            async for chunk in self.host.generate(request):
                yield chunk
        except InvalidRequest as exc:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc),
                              {"param": exc.param or "", "error-code": exc.code or ""}) from None
        finally:
            self.active -= 1

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        async for chunk in single_stream(self._chunks(request), context):
            yield chunk

    async def GenerateMany(self, request_iterator, context: grpc.aio.ServicerContext):
        """Many Generate streams over one call (see :mod:`services.common.mux`); the router's transport."""
        async for batch in MuxSession(self._chunks, lambda: self.draining, "worker").run(request_iterator):
            yield batch

    async def GetLoad(self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext) -> pb.Load:
        snap = self.host.load_snapshot()
        card = self.host.card
        return pb.Load(
            running=snap.running,
            waiting=snap.waiting,
            kv_cache_usage=snap.kv_cache_usage,
            prefix_cache_hit_rate=snap.prefix_cache_hit_rate,
            models=[card.name, *card.aliases] if card else [],
            draining=self.draining,
            multiplex=True,
            adapters=self.host.adapters.names if self.host.adapters else [],
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        card = self.host.card
        resp = pb.ListModelsResponse()
        task = "embed" if self.host.pooling else ""
        if card:
            resp.models.add(id=card.name, root=card.path, max_model_len=card.max_model_len, created=card.created,
                            owned_by="llmsvc", task=task)
            for alias in card.aliases:
                resp.models.add(id=alias, root=card.path, max_model_len=card.max_model_len, created=card.created,
                                owned_by="llmsvc", parent=card.name, task=task)
        return resp

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        await self._check_model(request.model, context)
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is draining")
        self.active += 1
        try:
            return await self.host.embed(request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc),
                                trailing_metadata=(("param", exc.param or ""), ("error-code", exc.code or "")))
        finally:
            self.active -= 1

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        await self._check_model(request.model, context)
        try:
            if request.WhichOneof("input") == "chat":
                ids = self.host.encode_chat(request.chat, self.host.offered_tools(request.chat))
            else:
                ids = self.host.encode_prompt(request.prompt, request.add_special_tokens)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        tok = self.host.tokenizer
        return pb.TokenizeResponse(
            tokens=ids, count=len(ids), max_model_len=self.host.card.max_model_len,
            token_strs=tok.convert_ids_to_tokens(ids),
        )

    async def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext):
        await self._check_model(request.model, context)
        try:
            return pb.DetokenizeResponse(prompt=self.host.detokenize(list(request.tokens)))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def TokenizerInfo(self, request: pb.TokenizerInfoRequest, context: grpc.aio.ServicerContext):
        await self._check_model(request.model, context)
        info, template = self.host.tokenizer_info()
        return pb.TokenizerInfoResponse(config_json=json.dumps(info), chat_template=template, model=self.host.card.name)

    async def SetAliases(self, request: pb.SetAliasesRequest, context: grpc.aio.ServicerContext):
        # Promotion in embedded mode: the router sees the new names on its next load poll.
        card = self.host.card
        card.aliases = [a for a in dict.fromkeys(request.aliases) if a and a != card.name]
        log.info("aliases now %s", card.aliases)
        return pb.SetAliasesResponse(models=[card.name, *card.aliases])

    async def Drain(self, request: pb.DrainRequest, context: grpc.aio.ServicerContext):
        # Stop taking new requests now, then take the SIGTERM path (in-flight calls get grace_s).
        self.draining = True
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        return pb.DrainResponse()
