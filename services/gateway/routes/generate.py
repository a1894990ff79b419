"""``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from services.common.pb import inference_pb2 as pb

from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError
from ..openai_format import ChatFormatter, CompletionFormatter
from ..schemas import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    JSONObjectFormat,
    JSONSchemaFormat,
    NamedToolChoice,
    Tool,
    _SamplingBody,
)
from ..serving import GenerationFlow

router = APIRouter(prefix="/v1", tags=["generation"])

# Tokens a chat template adds per message, on top of the content's own (upper bound for reservations).
_TEMPLATE_TOKENS_PER_MESSAGE = 8


def _params(body: _SamplingBody, max_tokens: int | None) -> pb.SamplingParams:
    p = pb.SamplingParams(
        max_tokens=max_tokens or 0, n=body.n, stop=body.stop_list(),
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, ignore_eos=body.ignore_eos,
    )
    for name in ("temperature", "top_p", "top_k", "min_p", "seed"):
        value = getattr(body, name)
        if value is not None:
            setattr(p, name, value)
    if body.logit_bias:
        for token, bias in body.logit_bias.items():
            token_id = int(token)
            if token_id >= 2**31:
                raise APIError(400, f"logit_bias: token id {token} is out of range.", param="logit_bias")
            p.logit_bias[token_id] = bias
    p.allowed_token_ids.extend(body.allowed_token_ids or ())
    p.bad_words.extend(body.bad_words or ())
    _structured(body, p.structured_outputs)
    return p


def _structured(body: _SamplingBody, so: pb.StructuredOutputs) -> None:
    """``response_format`` (chat) or vLLM's ``structured_outputs`` as the worker's one constraint."""
    fmt = getattr(body, "response_format", None)
    if isinstance(fmt, JSONSchemaFormat):
        so.json = json.dumps(fmt.json_schema.schema_)
    elif isinstance(fmt, JSONObjectFormat):
        so.json_object = True
    elif (x := body.structured_outputs) is not None:
        if x.json_ is not None:
            so.json = json.dumps(x.json_)
        elif x.choice is not None:
            so.choice.values.extend(x.choice)
        else:
            for kind in ("regex", "grammar", "json_object", "structural_tag"):
                if getattr(x, kind) is not None:
                    setattr(so, kind, getattr(x, kind))
        so.disable_any_whitespace = x.disable_any_whitespace
        so.disable_additional_properties = x.disable_additional_properties
        so.whitespace_pattern = x.whitespace_pattern or ""


def fill_chat(chat: pb.ChatMessages, messages: list[ChatMessageIn], tools: list[Tool] | None) -> None:
    """The messages, with their tool calls and tool call ids, and the offered tools, as the worker's template
    takes them (for generation and for ``/tokenize``)."""
    for m in messages:
        msg = chat.messages.add(role=m.role, content=m.text(), name=m.name or "", tool_call_id=m.tool_call_id or "",
                                content_null=m.content is None)
        for c in m.tool_calls or ():
            msg.tool_calls.add(id=c.id, type=c.type, name=c.function.name, arguments=c.function.arguments)
    if tools:
        chat.tools_json = json.dumps([t.model_dump(by_alias=True, exclude_none=True) for t in tools])


def set_tool_choice(chat: pb.ChatMessages, mode: str | None, function: str | None,
                    parallel_tool_calls: bool | None) -> None:
    """``tool_choice`` (``none``, ``auto``, ``required``, or a named ``function``) and ``parallel_tool_calls``,
    as the worker takes them (chat and the Responses API)."""
    if function is not None:
        chat.tool_choice.mode, chat.tool_choice.function = "function", function
    elif mode is not None:
        chat.tool_choice.mode = mode
    if parallel_tool_calls is not None:
        chat.parallel_tool_calls = parallel_tool_calls


def _chat(body: ChatCompletionRequest) -> pb.ChatMessages:
    chat = pb.ChatMessages(add_generation_prompt=True)
    fill_chat(chat, body.messages, body.tools)
    choice = body.tool_choice
    named = isinstance(choice, NamedToolChoice)
    set_tool_choice(chat, None if named else choice, choice.function.name if named else None,
                    body.parallel_tool_calls)
    return chat


def _chat_bytes(chat: pb.ChatMessages) -> int:
    """An upper bound of the prompt's tokens (see :func:`_reserve`): its text's bytes and the template's."""
    total = len(chat.tools_json.encode())
    for m in chat.messages:
        total += len(m.content.encode()) + _TEMPLATE_TOKENS_PER_MESSAGE
        total += sum(len(c.name.encode()) + len(c.arguments.encode()) + _TEMPLATE_TOKENS_PER_MESSAGE
                     for c in m.tool_calls)
    return total


def refuse_unsupported(body) -> None:
    """No silent drops: an OpenAI parameter this server does not honour yet is a 400 that names it."""
    if (param := body.unsupported()) is not None:
        raise APIError(400, f"'{param}' is not supported by this server yet; leave it out. The parameters it "
                       "honours are listed in the README (\"API: what is honoured\").", param=param,
                       code="unsupported_parameter")


async def _reserve(upstreams, model: str, prompt_bytes: list[int], max_tokens: int | None, n: int,
                   settings) -> int:
    """Tokens to reserve at admission: every prompt's, and n completions for each prompt.

    Byte-level BPE never yields more tokens than bytes, so bytes bound a prompt from above; the reservation
    is reconciled to the real counts when the request ends. No prompt or completion can exceed the model's
    context window, so neither does its share of the reservation (a max_tokens past it is the worker's 400
    to give, not a rate-limit refusal), but each prompt of a batch is bounded on its own."""
    completion = max_tokens or settings.default_reserve_tokens
    if window := await upstreams.context_window(model):
        prompt_bytes, completion = [min(b, window) for b in prompt_bytes], min(completion, window)
    return sum(prompt_bytes) + len(prompt_bytes) * n * completion


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, settings: SettingsDep,
                           upstreams: UpstreamsDep):
    request.state.model = body.model
    refuse_unsupported(body)
    if (problem := body.problem()) is not None:
        raise APIError(400, problem[1], param=problem[0])
    params = _params(body, body.token_limit)
    if body.logprobs:
        params.logprobs = body.top_logprobs or 0
    chat = _chat(body)
    gen = pb.GenerateRequest(request_id=request.state.request_id, model=body.model, chat=chat, params=params,
                             user=body.user or body.safety_identifier or "",
                             session_id=body.prompt_cache_key or "")
    prompt_bytes = _chat_bytes(chat)
    fmt = ChatFormatter(body.model, body.include_usage, body.n, body.logprobs, tools=bool(body.tools))
    flow = GenerationFlow(request, settings, upstreams, route="/v1/chat/completions", model=body.model,
                          formatter=fmt, stream=body.stream, role_chunks=True)
    reserve = await _reserve(upstreams, body.model, [prompt_bytes], body.token_limit, body.n, settings)
    return await flow.run([gen], reserve)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    request.state.model = body.model
    refuse_unsupported(body)
    prompt_only = body.echo and body.max_tokens == 0
    params = _params(body, 1 if prompt_only else body.max_tokens)
    if body.logprobs is not None:
        params.logprobs = body.logprobs
        if body.echo:
            params.prompt_logprobs = body.logprobs
    gens, prompt_bytes = [], []
    for i, prompt in enumerate(body.prompts()):
        g = pb.GenerateRequest(request_id=f"{request.state.request_id}-{i}" if i else request.state.request_id,
                               model=body.model, params=params, user=body.user or "", return_prompt=body.echo)
        if isinstance(prompt, str):
            g.prompt = prompt
            prompt_bytes.append(len(prompt.encode()))
        else:
            g.prompt_token_ids.ids.extend(prompt)
            prompt_bytes.append(len(prompt))
        gens.append(g)
    fmt = CompletionFormatter(body.model, body.include_usage, body.logprobs is not None, body.echo, prompt_only)
    flow = GenerationFlow(request, settings, upstreams, route="/v1/completions", model=body.model,
                          formatter=fmt, stream=body.stream, role_chunks=False)
    reserve = await _reserve(upstreams, body.model, prompt_bytes, body.max_tokens, body.n, settings)
    return await flow.run(gens, reserve)
