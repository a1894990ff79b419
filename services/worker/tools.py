"""Tool calls and structured outputs on the worker, through vLLM's own request model, parsers and grammars.

A chat request that offers tools is rebuilt as vLLM's ``ChatCompletionRequest`` (so vLLM validates
``tools`` and ``tool_choice`` as its server does) and handed to the model's parser, chosen by name
from vLLM's registry (``hermes``, ``llama3_json``, ``mistral`` …). The parser's ``adjust_request``
turns ``required``, a named function and ``parallel_tool_calls: false`` into a structural tag that
xgrammar enforces while decoding, so those calls are well-formed by construction. Each choice's output
then goes through the parser's streaming entry point, one engine step at a time: the chunks carry the
message content without the call markup and the calls' pieces in OpenAI's streaming shape. The
gateway folds the same pieces into a non-streamed response, so both give the same calls.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from services.common.pb import inference_pb2 as pb

log = logging.getLogger(__name__)

_NO_PARSER = ("", "none")


class ToolsError(ValueError):
    """The request's tools, tool choice or output constraint cannot be served (a 400 naming ``param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def tool_parser_name(configured: str | None, model_path: str) -> str:
    """The tool parser for a model: the worker's setting if given, else ``tool_parser`` in the model's
    ``llmsvc.json`` (what the trainer writes for the models it makes), else none."""
    if configured is not None:
        return "" if configured in _NO_PARSER else configured
    try:
        meta = json.loads((Path(model_path) / "llmsvc.json").read_text())
    except (OSError, ValueError):
        return ""
    name = meta.get("tool_parser") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name not in _NO_PARSER else ""


def load_parser_class(name: str, tokenizer, model_name: str, strict_level: str = "parameter"):
    """vLLM's composed parser class for tool parser ``name`` (checked against the tokenizer), or None.

    ``strict_level`` is vLLM's ``--tool-strict-level``: ``auto`` constrains the call envelope for
    ``required`` and named choices and a function's arguments only when it says ``strict: true`` (OpenAI's
    rule); ``parameter`` (our default) constrains every call, ``auto`` ones included, to its function's
    parameters schema, so arguments always parse and validate."""
    if not name:
        return None
    from vllm.parser.parser_manager import ParserManager

    return ParserManager.get_parser(tool_parser_name=name, enable_auto_tools=True, model_name=model_name,
                                    tokenizer=tokenizer, tool_strict_level=strict_level)


def structured_outputs(so: pb.StructuredOutputs):
    """vLLM's ``StructuredOutputsParams`` for the proto's constraint, or None when it sets none."""
    kind = so.WhichOneof("kind")
    if kind is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    value = list(so.choice.values) if kind == "choice" else getattr(so, kind)
    return StructuredOutputsParams(**{kind: value}, disable_any_whitespace=so.disable_any_whitespace,
                                   disable_additional_properties=so.disable_additional_properties,
                                   whitespace_pattern=so.whitespace_pattern or None)


def template_messages(chat: pb.ChatMessages) -> list[dict]:
    """The messages as chat templates take them: assistant calls with parsed arguments (as vLLM and
    transformers pass them), tool turns with their call id, a null content as None."""
    out = []
    for m in chat.messages:
        msg: dict = {"role": m.role, "content": None if m.content_null else m.content}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": c.type or "function",
                                  "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                                 for c in m.tool_calls]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _arguments(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def tools_of(chat: pb.ChatMessages) -> list[dict] | None:
    if not chat.tools_json:
        return None
    try:
        tools = json.loads(chat.tools_json)
    except ValueError as exc:
        raise ToolsError(f"'tools' is not valid JSON: {exc}", "tools") from None
    return tools or None


def _tool_choice(chat: pb.ChatMessages):
    mode = chat.tool_choice.mode
    if mode == "function":
        return {"type": "function", "function": {"name": chat.tool_choice.function}}
    return mode or None


@dataclass
class ChoiceParser:
    """One choice's parser state: vLLM's stateful parser, and whether it has produced a call."""

    parser: object
    called: bool = False


@dataclass
class ToolSession:
    """The tool side of one request: vLLM's adjusted request and a parser per choice."""

    request: object
    parser_cls: type
    tokenizer: object
    model_config: object
    prompt_ids: list[int]
    choices: dict[int, ChoiceParser] = field(default_factory=dict)

    @classmethod
    def open(cls, chat: pb.ChatMessages, tools: list[dict], structured, parser_cls, tokenizer, model_config,
             model_name: str, prompt_ids: list[int]) -> ToolSession | None:
        """A session when the request offers tools it may call (``tool_choice`` not ``none``); else None.

        Raises :class:`ToolsError` for what vLLM's server refuses (an unknown function in ``tool_choice``,
        ``required`` without tools …) and for tools offered to a model without a parser."""
        choice = _tool_choice(chat)
        if not tools or choice == "none":
            return None
        if parser_cls is None:
            raise ToolsError(f"The model '{model_name}' has no tool parser configured, so it cannot call tools; "
                             "leave out 'tools', or serve it with a tool parser (LLMSVC_WORKER_TOOL_PARSER, "
                             "or \"tool_parser\" in its llmsvc.json).", "tools")
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.exceptions import VLLMClientError

        body: dict = {"model": model_name, "messages": [{"role": "user", "content": ""}], "tools": tools,
                      "stream": True}
        if choice is not None:
            body["tool_choice"] = choice
        if chat.HasField("parallel_tool_calls"):
            body["parallel_tool_calls"] = chat.parallel_tool_calls
        try:
            request = ChatCompletionRequest.model_validate(body)
        except (ValueError, VLLMClientError) as exc:
            raise ToolsError(_first_error(exc), _param_of(exc, "tools")) from None
        if structured is not None:
            request.structured_outputs = structured
        session = cls(request, parser_cls, tokenizer, model_config, prompt_ids)
        try:
            session.request = session._parser(0).adjust_request(request)
        except (ValueError, VLLMClientError) as exc:
            raise ToolsError(str(exc), _param_of(exc, "tool_choice")) from None
        return session

    def _parser(self, index: int):
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = ChoiceParser(
                self.parser_cls(self.tokenizer, self.request.tools, model_config=self.model_config))
        return state.parser

    @property
    def structured_outputs(self):
        return self.request.structured_outputs

    @property
    def skip_special_tokens(self) -> bool:
        return self.request.skip_special_tokens

    def feed(self, delta: pb.ChoiceDelta, token_ids: list[int], finished: bool) -> None:
        """Parse one engine step of a choice into ``delta``: its content, its calls' pieces, and
        ``tool_calls`` as the finish reason of a choice that called a tool and stopped."""
        parser = self._parser(delta.index)
        state = self.choices[delta.index]
        message = parser.parse_delta(delta.text, token_ids, self.request, self.prompt_ids, finished=finished)
        delta.content = (message.content or "") if message is not None else ""
        for call in (message.tool_calls if message is not None else None) or ():
            fn = call.function
            delta.tool_calls.add(index=call.index, id=call.id or "", type=call.type or "",
                                 name=(fn.name or "") if fn else "", arguments=(fn.arguments or "") if fn else "")
            state.called = True
        if finished and state.called and delta.finish_reason == "stop":
            delta.finish_reason = "tool_calls"


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return str(first.get("msg", exc))
        except (IndexError, TypeError, ValueError):
            pass
    return str(exc)


def _param_of(exc: Exception, default: str) -> str:
    param = getattr(exc, "parameter", None)
    if isinstance(param, str) and param:
        return param
    text = str(exc)
    for name in ("tool_choice", "parallel_tool_calls", "tools"):
        if name in text:
            return name
    return default
