"""Request bodies of the OpenAI-compatible routes, with OpenAI's ranges.

Fields are strict (no string-to-number coercion), so a wrong type is a 400
that names the field. Unknown fields are ignored, as vLLM's server does, so
clients that send newer OpenAI fields keep working.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 16
# Prompts in one /v1/completions request, and generations it may start (prompts × n): each is a stream on
# the worker, and a request must not be able to fill a worker's batch by itself.
MAX_PROMPTS = 256
MAX_CHOICES = 256
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 1024

FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
"""OpenAI's rule for function and schema names: letters, digits, underscores and dashes, at most 64."""


def check_json_schema(schema: dict) -> dict:
    """A JSON Schema that is not one (by the 2020-12 meta-schema) is the client's error, named where it is."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except RecursionError:
        raise ValueError("the JSON Schema is nested too deeply") from None
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(f"not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else "")) from None
    return schema


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class MediaPart(BaseModel):
    """An image, audio or file part: OpenAI defines them; the models served here read text only."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file"]


class FunctionCallIn(_Body):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    arguments: Annotated[str, Field(max_length=1 << 20)]


class ToolCallIn(_Body):
    """A call an earlier assistant turn made (``messages[i].tool_calls[j]``)."""

    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"]
    function: FunctionCallIn


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[TextPart | MediaPart, Field(discriminator="type")]] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    # OpenAI's, and not honoured (see unsupported()): refused, so that history is never lost.
    function_call: Any = None
    audio: Any = None
    refusal: str | None = None  # an earlier assistant turn's refusal text: read back as nothing to say

    def problem(self) -> tuple[str, str] | None:
        """(field, what is wrong) when the message's tool fields do not fit its role, or it has media parts."""
        for i, part in enumerate(self.content if isinstance(self.content, list) else ()):
            if isinstance(part, MediaPart):
                return f"content[{i}].type", (f"'{part.type}' content parts are not supported: the models served "
                                              "here read text only; send text parts")
        if self.role == "tool":
            if self.tool_call_id is None:
                return "tool_call_id", "a 'tool' message needs 'tool_call_id', the id of the call it answers"
            if self.content is None:
                return "content", "a 'tool' message needs 'content', the tool's result"
        elif self.tool_call_id is not None:
            return "tool_call_id", "'tool_call_id' belongs on 'tool' messages only"
        if self.tool_calls and self.role != "assistant":
            return "tool_calls", "'tool_calls' belongs on 'assistant' messages only"
        return None

    def unsupported(self) -> str | None:
        for name in ("function_call", "audio"):
            if getattr(self, name) not in (None, [], {}):
                return name
        return None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


def messages_problem(messages: list[ChatMessageIn]) -> tuple[str, str] | None:
    """(param, what is wrong) for the first message whose tool fields or parts do not fit (chat, /tokenize)."""
    for i, m in enumerate(messages):
        if (found := m.problem()) is not None:
            return f"messages[{i}].{found[0]}", found[1]
    return None


class StreamOptions(_Body):
    include_usage: bool = False


class FunctionDef(_Body):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v):
        return check_json_schema(v) if v is not None else v


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: FunctionName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(_Body):
    type: Literal["text"]


class JSONObjectFormat(_Body):
    type: Literal["json_object"]


class JSONSchemaSpec(_Body):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v):
        return check_json_schema(v)


class JSONSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class StructuredOutputsIn(_Body):
    """vLLM's ``structured_outputs`` extension: one constraint (``json``, ``regex``, ``choice``, ``grammar``,
    ``json_object`` or ``structural_tag``) and the options of its JSON grammar."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: Annotated[str, Field(min_length=1)] | None = None
    choice: Annotated[list[str], Field(min_length=1, max_length=1024)] | None = None
    grammar: Annotated[str, Field(min_length=1)] | None = None
    json_object: bool | None = None
    structural_tag: Annotated[str, Field(min_length=1)] | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("json_", "regex", "choice", "grammar", "json_object", "structural_tag")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("set exactly one of json, regex, choice, grammar, json_object, structural_tag "
                             f"(got {[k.rstrip('_') for k in kinds] or 'none'})")
        if isinstance(self.json_, str):
            try:
                parsed = json.loads(self.json_)
            except ValueError as exc:
                raise ValueError(f"'json' is neither a JSON Schema object nor its JSON text: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("'json' must be a JSON Schema object")
            self.json_ = parsed
        if self.json_ is not None:
            check_json_schema(self.json_)
        return self


LogitBias = Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Annotated[float, Field(ge=-100, le=100)]],
                      Field(max_length=MAX_LOGIT_BIAS)]
"""OpenAI's logit_bias: token ids (as JSON object keys) to a bias in [-100, 100]."""


class _SamplingBody(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, lt=2**31)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    user: Annotated[str, Field(max_length=256)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extension: generate exactly max_tokens (benchmarks use it so every side does the same work).
    ignore_eos: bool = False
    logit_bias: LogitBias | None = None
    # vLLM's extensions: a constraint on the output, and token filters.
    structured_outputs: StructuredOutputsIn | None = None
    allowed_token_ids: Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1,
                                                                                   max_length=1 << 16)] | None = None
    bad_words: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=1024)] | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# Fields OpenAI defines that this server does not honour yet, with the values that ask for nothing (and so
# may be sent): any other value is a 400 naming the field, never a silent 200.
_CHAT_UNSUPPORTED: dict[str, tuple] = {
    "functions": (None, []), "function_call": (None, "none"), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,),
    "web_search_options": (None,), "service_tier": (None, "auto", "default"), "store": (None, False),
}
_COMPLETION_UNSUPPORTED: dict[str, tuple] = {"suffix": (None, ""), "best_of": (None, 1)}


class ChatCompletionRequest(_SamplingBody):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    # Honoured as routing hints: requests with one key go to the same worker (its prefix cache); the identifier
    # counts as ``user`` when that is not set.
    prompt_cache_key: Annotated[str, Field(max_length=256)] | None = None
    safety_identifier: Annotated[str, Field(max_length=256)] | None = None
    tools: Annotated[list[Tool], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Accepted and not acted on: ``metadata`` describes a stored completion, which ``store`` (refused unless
    # false) would make.
    metadata: dict[str, str] | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    service_tier: Any = None
    store: Any = None

    def problem(self) -> tuple[str, str] | None:
        """(param, what is wrong) for what the fields' own types cannot say: a tool choice naming a function
        not offered, tool fields on the wrong role, two output constraints at once."""
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) < len(names):
            return "tools", "function names in 'tools' must be unique"
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            return "tool_choice", (f"'tool_choice' names the function {choice.function.name!r}, which is not in "
                                   f"'tools'" + (f" (offered: {sorted(names)})" if names else ""))
        if choice == "required" and not names:
            return "tool_choice", "'tool_choice': 'required' needs 'tools'"
        if self.structured_outputs is not None and self.response_format is not None \
                and not isinstance(self.response_format, TextFormat):
            return "response_format", "give either 'response_format' or 'structured_outputs', not both"
        return messages_problem(self.messages)

    def unsupported(self) -> str | None:
        """The first OpenAI parameter this request sets to something this server does not do, as its param
        path; None when everything it asks for is honoured."""
        for name, harmless in _CHAT_UNSUPPORTED.items():
            if getattr(self, name) not in harmless:
                return name
        for i, m in enumerate(self.messages):
            if (field := m.unsupported()) is not None:
                return f"messages[{i}].{field}"
        return None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# Integers travel as int32/int64 in the protos: a larger value is the client's error (400), not a 500.
TokenIds = Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1)]


class CompletionRequest(_SamplingBody):
    prompt: (Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
             | TokenIds | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])
    # 0 is allowed with echo, to score the prompt only (lm-evaluation-harness does this).
    max_tokens: Annotated[int, Field(ge=0, lt=2**31)] | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    suffix: Any = None
    best_of: Any = None

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    def unsupported(self) -> str | None:
        for name, harmless in _COMPLETION_UNSUPPORTED.items():
            if getattr(self, name) not in harmless:
                return name
        return None

    @field_validator("prompt")
    @classmethod
    def _bounded_choices(cls, prompt, info):
        count = 1 if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else len(prompt)
        n = info.data.get("n", 1)
        if count * n > MAX_CHOICES:
            raise ValueError(f"{count} prompts × n={n} would start {count * n} generations; at most {MAX_CHOICES} "
                             "per request: send fewer prompts or a smaller n")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: one string, several strings, one id list or several id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]
        return list(p)
