"""``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``, in the shapes of vLLM's server.

They live at the root (not under ``/v1``), as vLLM serves them, because that
is where lm-evaluation-harness's ``tokenizer_backend=remote`` looks: it strips
``/v1/completions`` from its ``base_url``. Its requests name no model, so a
request without ``model`` goes to the gateway's ``default_model`` setting when
it has one, else to the only model version being served; with several versions served and no
model named, the answer is a 400 that lists them.
"""

from __future__ import annotations

import json
from typing import Annotated

import grpc
from fastapi import APIRouter, Query, Request
from pydantic import Field

from services.common.grpcutil import request_metadata
from services.common.pb import inference_pb2 as pb

from ..admission import admit
from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError, from_grpc
from ..schemas import MAX_TOOLS, ChatMessageIn, Tool, _Body, messages_problem
from .generate import fill_chat

router = APIRouter(tags=["tokenizer"])


class TokenizeBody(_Body):
    model: Annotated[str, Field(max_length=256)] | None = None
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    tools: Annotated[list[Tool], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeBody(_Body):
    model: Annotated[str, Field(max_length=256)] | None = None
    tokens: list[Annotated[int, Field(ge=0, lt=2**31)]]  # int32 in the proto


async def _model(body_model: str | None, request: Request, settings, upstreams) -> str:
    admission = await admit(upstreams, request, model=body_model or "", scope="chat", reserve_tokens=0,
                            timeout_s=settings.auth_timeout_s)
    chosen = body_model or getattr(settings, "default_model", "")
    if not chosen:
        try:
            listed = await upstreams.router.ListModels(pb.ListModelsRequest(), timeout=5.0, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        # What workers serve now (a registered version listed before it is started reports no context length).
        versions = sorted({m.parent or m.id for m in listed.models if m.max_model_len})
        if len(versions) != 1:
            raise APIError(400, "Several model versions are served; name one in 'model' "
                                f"({', '.join(versions) or 'none is served'}).", param="model")
        chosen = versions[0]
    request.state.model = chosen
    await upstreams.context_window(chosen)  # refreshes the owners of newly listed models
    upstreams.check_owner(admission, chosen)
    return chosen


async def _call(method, req, model: str):
    try:
        return await method(req, timeout=10.0, metadata=request_metadata())
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, model) from None


@router.post("/tokenize")
async def tokenize(body: TokenizeBody, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    model = await _model(body.model, request, settings, upstreams)
    req = pb.TokenizeRequest(model=model, add_special_tokens=body.add_special_tokens)
    if body.messages is not None:
        req.chat.add_generation_prompt = body.add_generation_prompt
        if (problem := messages_problem(body.messages)) is not None:
            raise APIError(400, problem[1], param=problem[0])
        fill_chat(req.chat, body.messages, body.tools)
    elif body.prompt is not None:
        req.prompt = body.prompt
    else:
        raise APIError(400, "Send either 'prompt' or 'messages'.", param="prompt")
    resp = await _call(upstreams.router.Tokenize, req, model)
    out = {"count": resp.count, "max_model_len": resp.max_model_len, "tokens": list(resp.tokens)}
    if body.return_token_strs:
        out["token_strs"] = list(resp.token_strs)
    return out


@router.post("/detokenize")
async def detokenize(body: DetokenizeBody, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    model = await _model(body.model, request, settings, upstreams)
    resp = await _call(upstreams.router.Detokenize, pb.DetokenizeRequest(model=model, tokens=body.tokens), model)
    return {"prompt": resp.prompt}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                         model: Annotated[str | None, Query(max_length=256)] = None):
    chosen = await _model(model, request, settings, upstreams)
    resp = await _call(upstreams.router.TokenizerInfo, pb.TokenizerInfoRequest(model=chosen), chosen)
    info = json.loads(resp.config_json or "{}")
    if resp.chat_template:
        info["chat_template"] = resp.chat_template
    return info
