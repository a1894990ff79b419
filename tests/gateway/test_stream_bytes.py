"""The gateway's SSE encoder on the token path writes exactly what encoding each event's dict would.

``stream_bytes`` builds a stream's events from a cached frame instead of a dict per event (the gateway's
CPU per token is the cores the engine needs on a shared machine). These tests hold it to the dict path,
``sse(doc)`` for each doc of ``stream_chunks``, byte for byte, over the text and cases that could break a
hand-built JSON string: quotes, backslashes, control characters, non-ASCII and astral characters, empty
deltas, several choices per chunk, merged chunks, finish reasons, a model named by the first chunk, a
model name that needs escaping, and ``include_usage`` both ways. Every event must also parse as JSON.
"""

from __future__ import annotations

import json

import pytest

from services.common.pb import inference_pb2 as pb
from services.gateway.openai_format import ChatFormatter, CompletionFormatter, sse

TEXTS = ["hello", " ", "", 'say "hi"', "back\\slash", "tab\there\nnewline\r", "\x00\x01\x1f\x7f", "naïve café",
         "日本語", "emoji 😀 \U0001f9e0", "\u2028\u2029", "</script>", "{\"index\":0}", "null"]


def _chunk(pieces: list[tuple[int, str, str]], *, model: str = "", finished: bool = False,
           logprobs: bool = False) -> pb.GenerateChunk:
    c = pb.GenerateChunk(request_id="r", model=model)
    for index, text, finish in pieces:
        d = c.choices.add(index=index, text=text, finish_reason=finish)
        if logprobs:
            d.logprobs.add(token=text, logprob=-0.25, has_logprob=True, token_bytes=text.encode())
    if finished:
        c.finished = True
        c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.cached_tokens = 5, 9, 2
    return c


def _stream(n: int) -> list[pb.GenerateChunk]:
    """A stream of ``n`` choices: the first chunk names the model, every text case once, a merged chunk of
    several deltas per choice, then the finish reasons in the last chunk."""
    chunks = [_chunk([(i, "", "") for i in range(n)], model="tiny-chat@v3")]
    for t in TEXTS:
        chunks.append(_chunk([(i, f"{t}{i}" if i else t, "") for i in range(n)]))
    merged = b"".join(_chunk([(i, f"m{k}", "") for i in range(n)]).SerializeToString() for k in range(3))
    chunks.append(pb.GenerateChunk.FromString(merged))
    chunks.append(_chunk([(i, "end", "stop" if i % 2 == 0 else "length") for i in range(n)], finished=True))
    return chunks


def _pair(make):
    """Two formatters of the same stream: same id and created, so their events can be compared."""
    a, b = make(), make()
    b.id, b.created = a.id, a.created
    return a, b


def _check(a, b, chunks: list[pb.GenerateChunk], offset: int = 0) -> None:
    for chunk in chunks:
        expected = b"".join(sse(doc) for doc in a.stream_chunks(chunk, offset))
        got = b.stream_bytes(chunk, offset)
        assert got == expected, chunk
        for event in got.decode().split("\n\n")[:-1]:
            json.loads(event.removeprefix("data: "))
    assert (a.prompt_tokens, a.completion_tokens, a.cached_tokens) == (b.prompt_tokens, b.completion_tokens,
                                                                        b.cached_tokens) == (5, 9, 2)
    assert a.model == b.model


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_events_match_the_dict_encoding(n: int, include_usage: bool) -> None:
    a, b = _pair(lambda: ChatFormatter("alias", include_usage=include_usage, n=n, want_logprobs=False))
    _check(a, b, _stream(n))
    assert b.model == "tiny-chat@v3"  # the first chunk's model is in every later event


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_events_match_the_dict_encoding(include_usage: bool) -> None:
    a, b = _pair(lambda: CompletionFormatter("alias", include_usage=include_usage, want_logprobs=False, echo=False,
                                             prompt_only=False))
    _check(a, b, _stream(2), offset=4)  # a second upstream generation's choices start at 4


def test_a_model_name_that_needs_escaping_and_an_offset() -> None:
    a, b = _pair(lambda: ChatFormatter('we"ird\\model\u00e9', include_usage=True, n=1, want_logprobs=False))
    _check(a, b, [_chunk([(0, "x", "")]), _chunk([(0, "y", "stop")], finished=True)], offset=2)
    assert b'"index":2' in b.stream_bytes(_chunk([(0, "z", "")]), 2)


def test_logprobs_echo_and_prompt_only_take_the_dict_path_and_still_match() -> None:
    a, b = _pair(lambda: ChatFormatter("m", include_usage=False, n=1, want_logprobs=True))
    _check(a, b, [_chunk([(0, t, "")], logprobs=True) for t in TEXTS[:4]]
           + [_chunk([(0, "", "stop")], finished=True, logprobs=True)])
    for echo, prompt_only in [(True, False), (True, True)]:
        a, b = _pair(lambda echo=echo, prompt_only=prompt_only: CompletionFormatter(
            "m", include_usage=True, want_logprobs=False, echo=echo, prompt_only=prompt_only))
        first = _chunk([(0, "a", "")])
        first.prompt_text = "PROMPT "
        for chunk in [first, _chunk([(0, "b", "length")], finished=True)]:
            assert b.stream_bytes(chunk) == b"".join(sse(doc) for doc in a.stream_chunks(chunk))


def test_a_chunk_with_no_text_and_no_finish_writes_nothing() -> None:
    chat = ChatFormatter("m", include_usage=True, n=1, want_logprobs=False)
    completion = CompletionFormatter("m", include_usage=True, want_logprobs=False, echo=False, prompt_only=False)
    assert chat.stream_bytes(_chunk([(0, "", "")])) == b""
    assert completion.stream_bytes(_chunk([(0, "", "")])) == b""
