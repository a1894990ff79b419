"""Request bodies of the OpenAI-compatible routes, with OpenAI's ranges.

Fields are strict (no string-to-number coercion), so a wrong type is a 400
that names the field. Unknown fields are ignored, as vLLM's server does, so
clients that send newer OpenAI fields keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16
# Prompts in one /v1/completions request, and generations it may start (prompts × n): each is a stream on
# the worker, and a request must not be able to fill a worker's batch by itself.
MAX_PROMPTS = 256
MAX_CHOICES = 256
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    # OpenAI's, refused while tool calling is not built (see unsupported()): history must not be lost.
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    audio: Any = None
    refusal: str | None = None  # an earlier assistant turn's refusal text: read back as nothing to say

    def unsupported(self) -> str | None:
        for name in ("tool_calls", "tool_call_id", "function_call", "audio"):
            if getattr(self, name) not in (None, [], {}):
                return name
        if self.role == "tool":
            return "role"
        return None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


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
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "logit_bias": (None, {}), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,),
    "web_search_options": (None,), "service_tier": (None, "auto", "default"), "store": (None, False),
}
_COMPLETION_UNSUPPORTED: dict[str, tuple] = {"logit_bias": (None, {}), "suffix": (None, ""), "best_of": (None, 1)}


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
    # Accepted and not acted on: with ``parallel_tool_calls`` only tools matter (refused above), and
    # ``metadata`` describes a stored completion, which ``store`` (refused unless false) would make.
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    logit_bias: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    service_tier: Any = None
    store: Any = None

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
    logit_bias: Any = None
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
