"""OpenAI's Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``, and
``GET /v1/responses/{id}/input_items``.

A response is generated on the chat path (same admission, limits, usage, worker and errors); see
:mod:`..responses_api` for the shapes. With ``store`` (the default, as OpenAI's) the ended response, its input
items and the conversation a continuation starts from are written to the response store (auth, on the shared
database) before the client gets the end of it, so ``previous_response_id`` works at once and on any gateway
replica. Everything stored belongs to the owner of the key that made it; another owner's id is a 404.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import grpc
from fastapi import APIRouter, Query, Request

from services.common.pb import inference_pb2 as pb
from services.common.pb import responses_pb2 as rpb

from ..admission import Admission
from ..deps import ChatCaller, SettingsDep, UpstreamsDep
from ..errors import APIError
from ..responses_api import (
    NamedFunctionChoice,
    ResponseCreateRequest,
    ResponsesFormatter,
    TextFormatJSONObject,
    TextFormatJSONSchema,
    normalize_input,
    sse_event,
    to_messages,
)
from ..serving import GenerationFlow
from .generate import _chat_bytes, _reserve, fill_chat, refuse_unsupported, set_tool_choice

router = APIRouter(prefix="/v1", tags=["responses"])
STORE_TIMEOUT_S = 10.0


def _store_error(exc: grpc.aio.AioRpcError, response_id: str, param: str | None = None) -> APIError:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return APIError(404, f"No response found with id '{response_id}'.", param=param, code="not_found")
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return APIError(503, "The response store is unavailable; retry shortly.", code="service_unavailable",
                        headers={"retry-after": "1"})
    return APIError(502, f"Response store error: {exc.details() or exc.code().name}", code="upstream_error")


async def _get(upstreams, admission: Admission, response_id: str, *, param: str | None = None,
               input_items: bool = False, context: bool = False) -> rpb.StoredResponse:
    try:
        return await upstreams.responses.GetResponse(
            rpb.GetResponseRequest(id=response_id, with_input_items=input_items, with_context=context),
            timeout=STORE_TIMEOUT_S, metadata=admission.metadata)
    except grpc.aio.AioRpcError as exc:
        raise _store_error(exc, response_id, param) from None


class ResponsesFlow(GenerationFlow):
    """The chat flow with the Responses shape: semantic events, and the store written before the end."""

    fmt: ResponsesFormatter

    def __init__(self, *args, body: ResponseCreateRequest, input_items: list[dict], context: list[dict],
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.body, self.input_items, self.context = body, input_items, context

    async def _store(self) -> None:
        if not self.body.store:
            return
        doc = self.fmt.response()
        stored = rpb.StoredResponse(
            id=doc["id"], model=doc["model"], previous_response_id=self.body.previous_response_id or "",
            response_json=json.dumps(doc, ensure_ascii=False), created_at=doc["created_at"],
            input_items_json=json.dumps(self.input_items, ensure_ascii=False),
            context_json=json.dumps(self.context + self.input_items + doc["output"], ensure_ascii=False))
        try:
            await self.upstreams.responses.PutResponse(rpb.PutResponseRequest(response=stored),
                                                       timeout=STORE_TIMEOUT_S, metadata=self.admission.metadata)
        except grpc.aio.AioRpcError as exc:
            raise APIError(503, "The response was generated but could not be stored (the response store did not "
                           f"answer: {exc.code().name}); send the request again.", code="store_unavailable",
                           headers={"retry-after": "1"}) from None

    async def final(self) -> dict:
        self.fmt.closing()
        await self._store()
        return self.fmt.response()

    async def _sse(self):
        status, fmt = "cancelled", self.fmt
        try:
            fmt.model = self.generations[0].model or fmt.model
            yield b"".join(sse_event(e) for e in fmt.opening())
            async for _, chunk in self._merged():
                if events := fmt.events(chunk):
                    yield b"".join(sse_event(e) for e in events)
            closing = fmt.closing()
            await self._store()  # before the terminal event: a client that continues at once finds it
            yield b"".join(sse_event(e) for e in closing)
            status = "ok"
        except APIError as exc:
            status = "error"
            yield b"".join(sse_event(e) for e in fmt.failed(exc.code or "server_error", exc.message))
        finally:
            self._close_all()
            self._report(status)


@router.post("/responses")
async def create_response(body: ResponseCreateRequest, request: Request, settings: SettingsDep,
                          upstreams: UpstreamsDep):
    request.state.model = body.model
    refuse_unsupported(body)
    if (problem := body.problem()) is not None:
        raise APIError(400, problem[1], param=problem[0])
    input_items = normalize_input(body.input)
    fmt = ResponsesFormatter(body)
    flow = ResponsesFlow(request, settings, upstreams, route="/v1/responses", model=body.model, formatter=fmt,
                         stream=body.stream, role_chunks=False, body=body, input_items=input_items, context=[])
    # What is known before admission bounds the reservation: this input, the instructions and the output. A
    # previous response's context is read after it (the read needs the caller's identity); its tokens count
    # when the request's usage is reconciled.
    chat = _chat_messages(body, [], input_items)
    reserve = await _reserve(upstreams, body.model, [_chat_bytes(chat)], body.max_output_tokens, 1, settings)
    admission = await flow.admit(reserve)
    if body.previous_response_id:
        try:
            previous = await _get(upstreams, admission, body.previous_response_id, param="previous_response_id",
                                  context=True)
        except APIError as exc:
            raise flow.fail(exc) from None
        flow.context = json.loads(previous.context_json or "[]")
        chat = _chat_messages(body, flow.context, input_items)
    gen = pb.GenerateRequest(request_id=request.state.request_id, model=body.model, chat=chat, params=_params(body),
                             user=body.user or body.safety_identifier or "", session_id=body.prompt_cache_key or "")
    return await flow.generate([gen])


def _chat_messages(body: ResponseCreateRequest, context: list[dict], input_items: list[dict]) -> pb.ChatMessages:
    chat = pb.ChatMessages(add_generation_prompt=True)
    fill_chat(chat, to_messages(body.instructions, context + input_items), None)
    if tools := body.chat_tools():
        chat.tools_json = json.dumps(tools)
    choice = body.tool_choice
    named = isinstance(choice, NamedFunctionChoice)
    set_tool_choice(chat, None if named else choice, choice.name if named else None, body.parallel_tool_calls)
    return chat


def _params(body: ResponseCreateRequest) -> pb.SamplingParams:
    """Sampling as the Responses API sets it: temperature, top_p, max_output_tokens and ``text.format``."""
    p = pb.SamplingParams(max_tokens=body.max_output_tokens or 0, n=1)
    if body.temperature is not None:
        p.temperature = body.temperature
    if body.top_p is not None:
        p.top_p = body.top_p
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, TextFormatJSONSchema):
        p.structured_outputs.json = json.dumps(fmt.schema_)
    elif isinstance(fmt, TextFormatJSONObject):
        p.structured_outputs.json_object = True
    return p


@router.get("/responses/{response_id}")
async def retrieve_response(response_id: str, caller: ChatCaller, upstreams: UpstreamsDep):
    stored = await _get(upstreams, caller, response_id)
    return json.loads(stored.response_json)


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, caller: ChatCaller, upstreams: UpstreamsDep):
    try:
        await upstreams.responses.DeleteResponse(rpb.DeleteResponseRequest(id=response_id), timeout=STORE_TIMEOUT_S,
                                                 metadata=caller.metadata)
    except grpc.aio.AioRpcError as exc:
        raise _store_error(exc, response_id) from None
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/responses/{response_id}/input_items")
async def list_input_items(response_id: str, caller: ChatCaller, upstreams: UpstreamsDep,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           order: Literal["asc", "desc"] = "desc", after: str | None = None,
                           include: Annotated[list[str] | None, Query()] = None):
    if include:
        raise APIError(400, "'include' is not supported by this server yet; leave it out.", param="include",
                       code="unsupported_parameter")
    stored = await _get(upstreams, caller, response_id, input_items=True)
    items = json.loads(stored.input_items_json or "[]")
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [x["id"] for x in items]
        if after not in ids:
            raise APIError(400, f"'after' names no input item of response '{response_id}'.", param="after")
        items = items[ids.index(after) + 1:]
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
