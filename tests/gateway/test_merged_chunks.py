"""Streaming a merged upstream chunk: one event per choice, with exactly the text and logprobs it replaced.

When the client or the gateway lags, the gateway's Relay hands over several worker chunks as one
(their concatenated bytes; see tests/common/test_relay.py). These tests build such a chunk the same
way, by concatenating serialized chunks, and check what the formatters make of it: the same text,
logprobs, finish reasons and usage as the chunks one by one, in fewer events.
"""

from __future__ import annotations

from services.common.pb import inference_pb2 as pb
from services.gateway.openai_format import ChatFormatter, CompletionFormatter


def _lp(tid: int, token: str, logprob: float) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=tid, token=token, logprob=logprob, has_logprob=True, token_bytes=token.encode(),
                           top=[pb.TopLogprob(token_id=tid, token=token, logprob=logprob, token_bytes=token.encode())])


def _chunks(n_choices: int = 1, tokens: int = 4) -> list[pb.GenerateChunk]:
    out = []
    for i in range(tokens):
        c = pb.GenerateChunk(request_id="r", model="v2")
        for k in range(n_choices):
            last = i == tokens - 1
            c.choices.add(index=k, text=f"{k}t{i} ", finish_reason="length" if last else "",
                          logprobs=[_lp(i, f"{k}t{i} ", -0.5 * i)])
        if i == tokens - 1:
            c.finished = True
            c.usage.prompt_tokens, c.usage.completion_tokens = 7, tokens * n_choices
        out.append(c)
    return out


def _merge(chunks: list[pb.GenerateChunk]) -> pb.GenerateChunk:
    return pb.GenerateChunk.FromString(b"".join(c.SerializeToString() for c in chunks))


def _content(events: list[dict]) -> dict[int, str]:
    text: dict[int, str] = {}
    for e in events:
        for ch in e["choices"]:
            text[ch["index"]] = text.get(ch["index"], "") + (ch["delta"].get("content") or "")
    return text


def _chat() -> ChatFormatter:
    return ChatFormatter("alias", include_usage=True, n=2, want_logprobs=True)


def test_chat_merged_chunk_is_one_event_per_choice_then_the_finish_events():
    one_by_one, merged = _chat(), _chat()
    separate = [e for c in _chunks(2) for e in one_by_one.stream_chunks(c)]
    together = merged.stream_chunks(_merge(_chunks(2)))
    assert len(separate) == 2 * 4 + 2
    # Per choice: one content event with all its text and logprobs, then its finish event.
    assert [(e["choices"][0]["index"], e["choices"][0]["finish_reason"]) for e in together] == \
        [(0, None), (0, "length"), (1, None), (1, "length")]
    assert _content(together) == _content(separate) == {0: "0t0 0t1 0t2 0t3 ", 1: "1t0 1t1 1t2 1t3 "}
    lps = [x["logprob"] for x in together[0]["choices"][0]["logprobs"]["content"]]
    assert lps == [0.0, -0.5, -1.0, -1.5]
    assert together[1]["choices"][0]["delta"] == {}
    assert all(e["model"] == "v2" for e in together)
    assert merged.usage_chunk()["usage"] == one_by_one.usage_chunk()["usage"]
    assert merged.usage_chunk()["usage"]["completion_tokens"] == 8


def test_chat_fold_of_a_merged_chunk_equals_the_fold_of_its_parts():
    a, b = _chat(), _chat()
    for c in _chunks(2):
        a.fold(c)
    b.fold(_merge(_chunks(2)))
    assert a.response()["choices"] == b.response()["choices"]
    assert a.response()["usage"] == b.response()["usage"]


def test_completion_merged_chunk_keeps_echo_and_text_offsets():
    def fmt() -> CompletionFormatter:
        return CompletionFormatter("m", include_usage=False, want_logprobs=True, echo=True, prompt_only=False)

    parts = _chunks(1)
    parts[0].prompt_text = "PROMPT "
    parts[0].prompt_logprobs.append(pb.TokenLogprob(token="PROMPT ", has_logprob=False))
    one_by_one, merged = fmt(), fmt()
    separate = [e for c in parts for e in one_by_one.stream_chunks(c)]
    together = merged.stream_chunks(_merge(parts))
    assert len(together) == 1
    choice = together[0]["choices"][0]
    assert choice["text"] == "".join(e["choices"][0]["text"] for e in separate) == "PROMPT 0t0 0t1 0t2 0t3 "
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"]["text_offset"] == [0, 7, 11, 15, 19]
    assert choice["logprobs"]["token_logprobs"] == [None, 0.0, -0.5, -1.0, -1.5]
