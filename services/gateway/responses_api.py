"""OpenAI's Responses API on top of the chat path: the request body, its items as chat messages, and the
formatter that turns the worker's chunks into a response object and its semantic stream events.

A response is generated exactly as a chat completion is (same worker, template, tool parser and grammars);
what differs is the shape. Input items (``message``, ``function_call``, ``function_call_output``) become
chat messages; the output becomes ``message`` and ``function_call`` items. The stream is OpenAI's sequence:
``response.created``, ``response.in_progress``, then per output item ``response.output_item.added``,
(``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
``response.content_part.done``) or (``response.function_call_arguments.delta``…,
``response.function_call_arguments.done``), ``response.output_item.done``, and last
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it, ``response.failed`` when
the generation broke). Every event carries its ``sequence_number``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.pb import inference_pb2 as pb

from .errors import APIError
from .schemas import MAX_TOOLS, ChatMessageIn, FunctionName, check_json_schema

MAX_ITEMS = 2048
MAX_METADATA = 16


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class FunctionTool(_Body):
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v):
        return check_json_schema(v) if v is not None else v


class NamedFunctionChoice(_Body):
    type: Literal["function"]
    name: FunctionName


class TextFormatText(_Body):
    type: Literal["text"]


class TextFormatJSONObject(_Body):
    type: Literal["json_object"]


class TextFormatJSONSchema(_Body):
    type: Literal["json_schema"]
    name: FunctionName
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v):
        return check_json_schema(v)


class TextConfig(_Body):
    format: Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema,
                      Field(discriminator="type")] | None = None
    verbosity: Any = None


class ResponsesStreamOptions(_Body):
    include_obfuscation: bool | None = None


# Fields OpenAI defines that this server does not do, with the values that ask for nothing: any other value
# is a 400 naming the field (no silent drops).
_UNSUPPORTED: dict[str, tuple] = {
    "background": (None, False), "conversation": (None,), "include": (None, []), "max_tool_calls": (None,),
    "prompt": (None,), "reasoning": (None,), "top_logprobs": (None, 0), "truncation": (None, "disabled"),
    "service_tier": (None, "auto", "default"), "prompt_cache_retention": (None,), "access_programs": (None,),
    "background_options": (None,), "context_management": (None, []), "image": (None,), "moderation": (None,),
    "prompt_cache_options": (None,),
}


class ResponseCreateRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: Annotated[str, Field(min_length=1)] | Annotated[list[Any], Field(min_length=1, max_length=MAX_ITEMS)]
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    store: bool = True
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    max_output_tokens: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=MAX_METADATA)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    safety_identifier: Annotated[str, Field(max_length=256)] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=256)] | None = None
    background: Any = None
    conversation: Any = None
    include: Any = None
    max_tool_calls: Any = None
    prompt: Any = None
    reasoning: Any = None
    top_logprobs: Any = None
    truncation: Any = None
    service_tier: Any = None
    prompt_cache_retention: Any = None
    access_programs: Any = None
    background_options: Any = None
    context_management: Any = None
    image: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None

    def unsupported(self) -> str | None:
        for name, harmless in _UNSUPPORTED.items():
            if getattr(self, name) not in harmless:
                return name
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            return "text.verbosity"
        if self.stream_options is not None and self.stream_options.include_obfuscation:
            return "stream_options.include_obfuscation"
        return None

    def problem(self) -> tuple[str, str] | None:
        names = [t.name for t in self.tools or ()]
        if len(set(names)) < len(names):
            return "tools", "function names in 'tools' must be unique"
        choice = self.tool_choice
        if isinstance(choice, NamedFunctionChoice) and choice.name not in names:
            return "tool_choice", (f"'tool_choice' names the function {choice.name!r}, which is not in 'tools'"
                                   + (f" (offered: {sorted(names)})" if names else ""))
        if choice == "required" and not names:
            return "tool_choice", "'tool_choice': 'required' needs 'tools'"
        return None

    def chat_tools(self) -> list[dict] | None:
        """The tools in chat's shape (``{"type": "function", "function": {...}}``)."""
        if not self.tools:
            return None
        return [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True, by_alias=True)}
                for t in self.tools]

    def tool_choice_json(self) -> str | dict:
        choice = self.tool_choice
        if isinstance(choice, NamedFunctionChoice):
            return {"type": "function", "name": choice.name}
        return choice or "auto"

    def text_json(self) -> dict:
        fmt = self.text.format if self.text is not None else None
        if fmt is None:
            return {"format": {"type": "text"}, "verbosity": "medium"}
        return {"format": fmt.model_dump(by_alias=True, exclude_none=True), "verbosity": "medium"}


# -- input items -------------------------------------------------------------------------------------------

_TEXT_PARTS = {"input_text", "output_text"}
_MEDIA_PARTS = {"input_image", "input_file", "input_audio"}


def _str(value, where: str, *, allow_empty: bool = True, limit: int = 1 << 22) -> str:
    if not isinstance(value, str):
        raise APIError(400, f"'{where}' must be a string.", param=where)
    if not allow_empty and not value:
        raise APIError(400, f"'{where}' must not be empty.", param=where)
    if len(value) > limit:
        raise APIError(400, f"'{where}' is longer than {limit} characters.", param=where)
    return value


def _content_text(content, where: str) -> str:
    """A message's content (a string, or a list of text parts) as its text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"'{where}' must be a string or a list of content parts.", param=where)
    out = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise APIError(400, f"'{at}' must be an object.", param=at)
        kind = part.get("type")
        if kind in _MEDIA_PARTS:
            raise APIError(400, f"'{kind}' content parts are not supported: the models served here read text "
                           "only; send 'input_text' parts.", param=f"{at}.type")
        if kind == "refusal":
            out.append(_str(part.get("refusal", ""), f"{at}.refusal"))
            continue
        if kind not in _TEXT_PARTS:
            raise APIError(400, f"Unknown content part type {kind!r}; expected one of 'input_text', "
                           "'output_text'.", param=f"{at}.type")
        out.append(_str(part.get("text"), f"{at}.text"))
    return "".join(out)


def normalize_input(value: str | list) -> list[dict]:
    """The request's input as canonical items, each with an id, as ``input_items`` lists them: a string is
    one user message. A malformed item is a 400 naming it (``input[i].field``)."""
    if isinstance(value, str):
        return [_message("user", value)]
    items = []
    for i, item in enumerate(value):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise APIError(400, f"'{at}' must be an object.", param=at)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"'{at}.role' must be one of 'user', 'assistant', 'system', 'developer'.",
                               param=f"{at}.role")
            if "content" not in item:
                raise APIError(400, f"'{at}' needs 'content'.", param=f"{at}.content")
            items.append(_message(role, _content_text(item["content"], f"{at}.content"), item.get("id")))
        elif kind == "function_call":
            items.append({"type": "function_call", "id": _id(item.get("id"), "fc", f"{at}.id"),
                          "call_id": _str(item.get("call_id"), f"{at}.call_id", allow_empty=False, limit=256),
                          "name": _str(item.get("name"), f"{at}.name", allow_empty=False, limit=256),
                          "arguments": _str(item.get("arguments", ""), f"{at}.arguments"), "status": "completed"})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _content_text(output, f"{at}.output")
            items.append({"type": "function_call_output", "id": _id(item.get("id"), "fco", f"{at}.id"),
                          "call_id": _str(item.get("call_id"), f"{at}.call_id", allow_empty=False, limit=256),
                          "output": text, "status": "completed"})
        elif kind is None:
            raise APIError(400, f"'{at}' needs a 'type' (or a 'role' for a message).", param=f"{at}.type")
        else:
            raise APIError(400, f"Input items of type {kind!r} are not supported; send 'message', "
                           "'function_call' or 'function_call_output' items.", param=f"{at}.type")
    return items


def _id(value, prefix: str, where: str) -> str:
    return new_id(prefix) if value is None else _str(value, where, allow_empty=False, limit=128)


def _message(role: str, text: str, item_id: str | None = None) -> dict:
    part = "output_text" if role == "assistant" else "input_text"
    content = {"type": part, "text": text}
    if part == "output_text":
        content["annotations"] = []
    return {"type": "message", "id": item_id or new_id("msg"), "role": role, "content": [content],
            "status": "completed"}


def to_messages(instructions: str | None, items: list[dict]) -> list[ChatMessageIn]:
    """Canonical items (the chain's context, then this input) as chat messages, the instructions first as a
    system message. Consecutive function calls join the assistant turn before them, as chat's tool_calls."""
    messages: list[dict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(p.get("text", p.get("refusal", "")) for p in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    if not messages:
        raise APIError(400, "The input holds nothing to answer.", param="input")
    return [ChatMessageIn.model_validate(m) for m in messages]


# -- output: the response object and its stream events ------------------------------------------------------

class ResponsesFormatter:
    """Folds the worker's chunks into output items, and, when streaming, into OpenAI's events for them.

    One state machine serves both modes: :meth:`events` returns the events a chunk causes (the non-streamed
    path drops them), and :meth:`response` is the object either mode ends with."""

    def __init__(self, body: ResponseCreateRequest) -> None:
        self.body = body
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.model = body.model
        self.status = "in_progress"
        self.output: list[dict] = []
        self._open: dict | None = None  # the output item being streamed
        self._calls: dict[int, dict] = {}  # tool-call index -> its function_call item
        self._seq = 0
        self.finish_reason = ""
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.error: dict | None = None
        self.completed_at: int | None = None

    # events
    def _event(self, kind: str, **fields) -> dict:
        doc = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return doc

    def opening(self) -> list[dict]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def _index(self, item: dict) -> int:
        return self.output.index(item)

    def _close_open(self) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = "completed"
        i = self._index(item)
        if item["type"] == "message":
            part = item["content"][0]
            return [self._event("response.output_text.done", item_id=item["id"], output_index=i, content_index=0,
                                text=part["text"], logprobs=[]),
                    self._event("response.content_part.done", item_id=item["id"], output_index=i, content_index=0,
                                part=part),
                    self._event("response.output_item.done", output_index=i, item=item)]
        return [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                            name=item["name"], arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=i, item=item)]

    def _text(self, text: str) -> list[dict]:
        out = []
        if self._open is None or self._open["type"] != "message":
            out += self._close_open()
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            self.output.append(item)
            self._open = item
            i = self._index(item)
            out.append(self._event("response.output_item.added", output_index=i, item=_copy(item)))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=i,
                                   content_index=0, part=_copy(part)))
        item = self._open
        item["content"][0]["text"] += text
        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self._index(item),
                               content_index=0, delta=text, logprobs=[]))
        return out

    def _call_piece(self, p: pb.ToolCallDelta) -> list[dict]:
        out = []
        item = self._calls.get(p.index)
        if item is None:
            out += self._close_open()
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                    "call_id": p.id or new_id("call"), "name": p.name, "arguments": ""}
            self._calls[p.index] = item
            self.output.append(item)
            self._open = item
            out.append(self._event("response.output_item.added", output_index=self._index(item), item=_copy(item)))
        if p.arguments:
            item["arguments"] += p.arguments
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=self._index(item), delta=p.arguments))
        return out

    def events(self, chunk: pb.GenerateChunk) -> list[dict]:
        """Fold one chunk (several merged deltas, maybe) and return the events it causes."""
        if chunk.model:
            self.model = chunk.model
        out: list[dict] = []
        for d in chunk.choices:
            text = d.content if d.HasField("content") else d.text
            if text:
                out += self._text(text)
            for p in d.tool_calls:
                out += self._call_piece(p)
            if d.finish_reason:
                self.finish_reason = d.finish_reason
        if chunk.finished:
            self.prompt_tokens += chunk.usage.prompt_tokens
            self.completion_tokens += chunk.usage.completion_tokens
            self.cached_tokens += chunk.usage.cached_tokens
        return out

    def fold(self, chunk: pb.GenerateChunk, offset: int = 0) -> None:
        """The non-streamed path: fold the chunk, drop its events."""
        self.events(chunk)

    def closing(self) -> list[dict]:
        """The open item's end events, then the response's terminal event; the response is final after it."""
        out = self._close_open()
        if self.finish_reason == "length":
            self.status = "incomplete"
            return out + [self._event("response.incomplete", response=self.response())]
        self.status, self.completed_at = "completed", int(time.time())
        return out + [self._event("response.completed", response=self.response())]

    def failed(self, code: str, message: str) -> list[dict]:
        self._open = None
        self.status, self.error = "failed", {"code": code or "server_error", "message": message}
        return [self._event("response.failed", response=self.response())]

    def response(self) -> dict:
        b = self.body
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "background": False, "completed_at": self.completed_at, "error": self.error,
            "incomplete_details": {"reason": "max_output_tokens"} if self.status == "incomplete" else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "max_tool_calls": None,
            "model": self.model, "output": [_copy(x) for x in self.output],
            "parallel_tool_calls": b.parallel_tool_calls if b.parallel_tool_calls is not None else True,
            "previous_response_id": b.previous_response_id, "prompt_cache_key": b.prompt_cache_key,
            "reasoning": {"effort": None, "summary": None}, "safety_identifier": b.safety_identifier,
            "service_tier": "default", "store": b.store, "temperature": b.temperature if b.temperature is not None
            else 1.0, "text": b.text_json(), "tool_choice": b.tool_choice_json(),
            "tools": [t.model_dump(by_alias=True) for t in b.tools or ()],
            "top_logprobs": 0, "top_p": b.top_p if b.top_p is not None else 1.0, "truncation": "disabled",
            "usage": self.usage() if self.status != "in_progress" else None, "user": b.user,
            "metadata": b.metadata or {},
        }

    def usage(self) -> dict:
        return {"input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _copy(doc: dict) -> dict:
    return json.loads(json.dumps(doc))


def sse_event(doc: dict) -> bytes:
    """One Responses stream event: ``event: <type>`` and its JSON ``data``."""
    return f"event: {doc['type']}\ndata: {json.dumps(doc, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()
