"""Turn upstream GenerateChunks into OpenAI's response and stream-chunk objects.

One formatter per endpoint. Streaming emits exactly OpenAI's sequence: a role
delta per choice, content deltas, an empty delta carrying ``finish_reason``,
then (when asked) a usage chunk with ``choices: []``. Non-streaming folds the
same chunks into one response.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _quote  # a str as json.dumps(..., ensure_ascii=False) writes it

from services.common.pb import inference_pb2 as pb


def _bytes(b: bytes) -> list[int]:
    return list(b)


def sse(doc: dict | str) -> bytes:
    """One server-sent event: ``data: <compact JSON>`` and a blank line (``doc`` as it is when a str)."""
    payload = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def usage_dict(prompt: int, completion: int, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


@dataclass
class _Delta:
    """What one choice gained in one upstream chunk (several deltas of a merged chunk, joined)."""

    text: list[str] = field(default_factory=list)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    finish_reason: str = ""
    tool_calls: list[pb.ToolCallDelta] = field(default_factory=list)


def _text(d: pb.ChoiceDelta) -> str:
    """The message text of a delta: the parsed content when the worker parsed tool calls out of it."""
    return d.content if d.HasField("content") else d.text


def tool_call_pieces(pieces: list[pb.ToolCallDelta]) -> list[dict]:
    """Tool-call deltas in OpenAI's streaming shape, consecutive pieces of one call joined: ``index``, then
    ``id``, ``type`` and ``function.name`` in a call's first piece only, and ``function.arguments`` text."""
    out: list[dict] = []
    for p in pieces:
        if out and out[-1]["index"] == p.index and not p.id:
            fn = out[-1]["function"]
            fn["arguments"] = fn.get("arguments", "") + p.arguments
            continue
        entry: dict = {"index": p.index}
        if p.id:
            entry["id"] = p.id
            entry["type"] = p.type or "function"
            entry["function"] = {"name": p.name, "arguments": p.arguments}
        else:
            entry["function"] = {"arguments": p.arguments}
        out.append(entry)
    return out


def deltas_by_choice(chunk: pb.GenerateChunk, offset: int = 0) -> dict[int, _Delta]:
    """The chunk's deltas grouped by choice index (plus ``offset``), in order of first appearance.

    A chunk merged from several (see ``services.common.relay``) holds several deltas per choice;
    streaming sends each choice's group as one event, as vLLM's server does for a consumer that lags."""
    out: dict[int, _Delta] = {}
    for d in chunk.choices:
        g = out.get(offset + d.index)
        if g is None:
            g = out[offset + d.index] = _Delta()
        g.text.append(_text(d))
        g.logprobs.extend(d.logprobs)
        g.tool_calls.extend(d.tool_calls)
        if d.finish_reason:
            g.finish_reason = d.finish_reason
    return out


def _joined_deltas(chunk: pb.GenerateChunk, offset: int = 0) -> list[tuple[int, str, int, str]]:
    """Per choice of :func:`deltas_by_choice`: (index, joined text, number of logprobs, finish reason).

    A chunk with one delta, the token path's usual case, is read directly, without grouping."""
    if len(chunk.choices) == 1:
        d = chunk.choices[0]
        return [(offset + d.index, d.text, len(d.logprobs), d.finish_reason)]
    return [(i, "".join(g.text), len(g.logprobs), g.finish_reason) for i, g in deltas_by_choice(chunk, offset).items()]


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    tokens: int = 0
    # Tool calls by index, folded from their pieces: id, type, name and the arguments' text pieces.
    calls: dict[int, dict] = field(default_factory=dict)

    def add_call_piece(self, p: pb.ToolCallDelta) -> None:
        call = self.calls.setdefault(p.index, {"id": "", "type": "function", "name": "", "arguments": []})
        if p.id:
            call["id"], call["type"], call["name"] = p.id, p.type or "function", p.name
        call["arguments"].append(p.arguments)

    def tool_calls(self) -> list[dict]:
        return [{"id": c["id"], "type": c["type"],
                 "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
                for _, c in sorted(self.calls.items())]


class _Base:
    object_stream: str
    object_full: str
    prefix: str

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.choices: dict[int, _Choice] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self._frame_of: str | None = None  # the model the cached event frame was built for
        self._frame = ("", "")

    def _event_frame(self) -> tuple[str, str]:
        """An event of one stream chunk with one choice, as ``sse(self._envelope([choice]))`` writes it, cut
        around the choice's fields after ``{"index":``: the text before, and the text after.

        Every content event of a stream shares them, so :meth:`stream_bytes` writes only what differs
        (index, text, finish reason) instead of building and encoding a dict per event."""
        if self._frame_of != self.model:
            marker = "\x00"
            text = sse(self._envelope([{"index": marker}], obj=self.object_stream)).decode()
            before, _, after = text.rpartition(_quote(marker))  # the choices come after id and model
            self._frame_of, self._frame = self.model, (before, after)
        return self._frame

    def add_usage(self, usage: pb.Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens

    def _envelope(self, choices: list[dict], *, obj: str) -> dict:
        doc = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
               "system_fingerprint": None, "choices": choices}
        if obj == self.object_stream and self.include_usage:
            doc["usage"] = None
        return doc

    def usage_chunk(self) -> dict:
        doc = self._envelope([], obj=self.object_stream)
        doc["usage"] = usage_dict(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        return doc


class ChatFormatter(_Base):
    object_stream = "chat.completion.chunk"
    object_full = "chat.completion"
    prefix = "chatcmpl"

    def __init__(self, model: str, include_usage: bool, n: int, want_logprobs: bool, tools: bool = False) -> None:
        super().__init__(model, include_usage)
        self.n = n
        self.want_logprobs = want_logprobs
        # Tools were offered: deltas may carry tool calls, so events are built as dicts, not from the frame.
        self.tools = tools

    @staticmethod
    def _logprob_entry(lp: pb.TokenLogprob) -> dict:
        return {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": _bytes(lp.token_bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token_bytes)} for t in lp.top],
        }

    def role_chunks(self, offset: int = 0) -> list[dict]:
        return [self._envelope([{"index": offset + i, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}], obj=self.object_stream)
                for i in range(self.n)]

    def stream_chunks(self, chunk: pb.GenerateChunk, offset: int = 0) -> list[dict]:
        if chunk.model:
            self.model = chunk.model
        out = []
        for idx, d in deltas_by_choice(chunk, offset).items():
            text = "".join(d.text)
            if text or d.logprobs or d.tool_calls:
                lp = {"content": [self._logprob_entry(x) for x in d.logprobs]} if self.want_logprobs else None
                delta: dict = {"content": text} if text or not d.tool_calls else {}
                if d.tool_calls:
                    delta["tool_calls"] = tool_call_pieces(d.tool_calls)
                out.append(self._envelope([{"index": idx, "delta": delta, "logprobs": lp,
                                            "finish_reason": None}], obj=self.object_stream))
            if d.finish_reason:
                out.append(self._envelope([{"index": idx, "delta": {}, "logprobs": None,
                                            "finish_reason": d.finish_reason}], obj=self.object_stream))
        if chunk.finished:
            self.add_usage(chunk.usage)
        return out

    def stream_bytes(self, chunk: pb.GenerateChunk, offset: int = 0) -> bytes:
        """The SSE events of :meth:`stream_chunks`, encoded, byte for byte as ``sse`` encodes each one.

        The token path: once per choice per engine step. Without logprobs, an event is the stream's cached
        frame (:meth:`_event_frame`) around the index, the text and the finish reason."""
        if self.want_logprobs or self.tools:
            return b"".join(sse(doc) for doc in self.stream_chunks(chunk, offset))
        if chunk.model:
            self.model = chunk.model
        before, after = self._event_frame()
        out = []
        for idx, text, logprobs, finish in _joined_deltas(chunk, offset):
            if text or logprobs:
                out.append(f'{before}{idx},"delta":{{"content":{_quote(text)}}},"logprobs":null,'
                           f'"finish_reason":null{after}')
            if finish:
                out.append(f'{before}{idx},"delta":{{}},"logprobs":null,"finish_reason":{_quote(finish)}{after}')
        if chunk.finished:
            self.add_usage(chunk.usage)
        return "".join(out).encode()

    def fold(self, chunk: pb.GenerateChunk, offset: int = 0) -> None:
        if chunk.model:
            self.model = chunk.model
        for d in chunk.choices:
            c = self.choices.setdefault(offset + d.index, _Choice())
            c.text.append(_text(d))
            c.logprobs.extend(d.logprobs)
            for p in d.tool_calls:
                c.add_call_piece(p)
            if d.finish_reason:
                c.finish_reason = d.finish_reason
        if chunk.finished:
            self.add_usage(chunk.usage)

    def response(self) -> dict:
        choices = []
        for idx in sorted(self.choices):
            c = self.choices[idx]
            lp = {"content": [self._logprob_entry(x) for x in c.logprobs]} if self.want_logprobs else None
            text = "".join(c.text)
            message: dict = {"role": "assistant", "content": text if text or not c.calls else None, "refusal": None}
            if c.calls:
                message["tool_calls"] = c.tool_calls()
            choices.append({"index": idx, "message": message, "logprobs": lp, "finish_reason": c.finish_reason})
        doc = self._envelope(choices, obj=self.object_full)
        doc["usage"] = usage_dict(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        return doc


class CompletionFormatter(_Base):
    object_stream = "text_completion"
    object_full = "text_completion"
    prefix = "cmpl"

    def __init__(self, model: str, include_usage: bool, want_logprobs: bool, echo: bool, prompt_only: bool) -> None:
        super().__init__(model, include_usage)
        self.want_logprobs = want_logprobs
        self.echo = echo
        # max_tokens=0 with echo: the worker generates one token that we drop.
        self.prompt_only = prompt_only
        self._offsets: dict[int, int] = {}
        self._echoed: set[int] = set()
        self._prompts: dict[int, tuple[str, list[pb.TokenLogprob]]] = {}

    def _legacy_logprobs(self, idx: int, items: list[pb.TokenLogprob]) -> dict:
        tokens, token_lps, tops, offsets = [], [], [], []
        pos = self._offsets.get(idx, 0)
        for x in items:
            tokens.append(x.token)
            token_lps.append(x.logprob if x.has_logprob else None)
            tops.append({t.token: t.logprob for t in x.top} if x.has_logprob else None)
            offsets.append(pos)
            pos += len(x.token)
        self._offsets[idx] = pos
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}

    def _remember_prompt(self, chunk: pb.GenerateChunk, offset: int) -> None:
        # The first chunk of each upstream generation carries the prompt text and logprobs.
        if offset not in self._prompts and (chunk.prompt_text or chunk.prompt_logprobs):
            self._prompts[offset] = (chunk.prompt_text, list(chunk.prompt_logprobs))

    def _delta(self, d: _Delta, idx: int, offset: int) -> tuple[str, list[pb.TokenLogprob]]:
        text, lps = ("", []) if self.prompt_only else ("".join(d.text), list(d.logprobs))
        if self.echo and idx not in self._echoed:
            self._echoed.add(idx)
            prompt_text, prompt_lps = self._prompts.get(offset, ("", []))
            text, lps = prompt_text + text, prompt_lps + lps
        return text, lps

    def _finish_usage(self, chunk: pb.GenerateChunk) -> None:
        if chunk.finished:
            self.add_usage(chunk.usage)
            if self.prompt_only:
                self.completion_tokens -= chunk.usage.completion_tokens

    def stream_chunks(self, chunk: pb.GenerateChunk, offset: int = 0) -> list[dict]:
        if chunk.model:
            self.model = chunk.model
        self._remember_prompt(chunk, offset)
        out = []
        for idx, d in deltas_by_choice(chunk, offset).items():
            text, lps = self._delta(d, idx, offset)
            finish = d.finish_reason or None
            if text or lps or finish:
                lp = self._legacy_logprobs(idx, lps) if self.want_logprobs else None
                out.append(self._envelope([{"index": idx, "text": text, "logprobs": lp, "finish_reason": finish}],
                                          obj=self.object_stream))
        self._finish_usage(chunk)
        return out

    def stream_bytes(self, chunk: pb.GenerateChunk, offset: int = 0) -> bytes:
        """The SSE events of :meth:`stream_chunks`, encoded, byte for byte as ``sse`` encodes each one
        (see :meth:`ChatFormatter.stream_bytes`); with logprobs, echo or no output, through the dicts."""
        if self.want_logprobs or self.echo or self.prompt_only:
            return b"".join(sse(doc) for doc in self.stream_chunks(chunk, offset))
        if chunk.model:
            self.model = chunk.model
        before, after = self._event_frame()
        out = []
        for idx, text, logprobs, finish in _joined_deltas(chunk, offset):
            if text or logprobs or finish:
                finish = _quote(finish) if finish else "null"
                out.append(f'{before}{idx},"text":{_quote(text)},"logprobs":null,"finish_reason":{finish}{after}')
        self._finish_usage(chunk)
        return "".join(out).encode()

    def fold(self, chunk: pb.GenerateChunk, offset: int = 0) -> None:
        if chunk.model:
            self.model = chunk.model
        self._remember_prompt(chunk, offset)
        for idx, d in deltas_by_choice(chunk, offset).items():
            c = self.choices.setdefault(idx, _Choice())
            text, lps = self._delta(d, idx, offset)
            c.text.append(text)
            c.logprobs.extend(lps)
            if d.finish_reason:
                c.finish_reason = d.finish_reason
        self._finish_usage(chunk)

    def response(self) -> dict:
        choices = []
        for idx in sorted(self.choices):
            c = self.choices[idx]
            self._offsets[idx] = 0
            lp = self._legacy_logprobs(idx, c.logprobs) if self.want_logprobs else None
            choices.append({"index": idx, "text": "".join(c.text), "logprobs": lp, "finish_reason": c.finish_reason})
        doc = self._envelope(choices, obj=self.object_full)
        doc["usage"] = usage_dict(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        return doc
