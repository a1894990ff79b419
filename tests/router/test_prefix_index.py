"""The prefix index as pure logic: chained chunk keys, longest match, LRU bound, forgetting a worker."""

from __future__ import annotations

from services.common.pb import inference_pb2 as pb
from services.router.prefix import PrefixIndex, chunk_keys


def prompt(text: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(model="m", prompt=text)


def test_keys_are_chained_so_a_shared_prefix_shares_keys_and_a_change_breaks_the_chain():
    a = chunk_keys(prompt("x" * 40 + "A" * 40), 10)
    b = chunk_keys(prompt("x" * 40 + "B" * 40), 10)
    assert len(a) == 8 and a[:4] == b[:4] and a[4:] != b[4:]
    # Same text later in the prompt does not match on its own: keys encode everything before them.
    assert chunk_keys(prompt("y" * 10 + "x" * 40), 10)[1:] != a[:4]
    assert chunk_keys(prompt("short"), 10) == []  # partial chunks are not cacheable, as in vLLM


def test_token_ids_and_chat_are_chunked_too():
    ids = pb.GenerateRequest(model="m", prompt_token_ids=pb.TokenIds(ids=list(range(100))))
    assert len(chunk_keys(ids, 16)) == 6
    chat = pb.GenerateRequest(model="m")
    chat.chat.messages.add(role="system", content="s" * 100)
    assert len(chunk_keys(chat, 16)) == 6  # 100 chars of content plus the role framing


def test_match_reports_the_longest_prefix_per_candidate():
    idx = PrefixIndex(max_chunks=100)
    keys = chunk_keys(prompt("p" * 100), 10)
    idx.insert(keys[:3], "w0")
    idx.insert(keys, "w1")
    assert idx.match(keys, {"w0", "w1"}) == {"w0": 3, "w1": 10}
    assert idx.match(keys, {"w0"}) == {"w0": 3}
    assert idx.match(chunk_keys(prompt("q" * 100), 10), {"w0", "w1"}) == {}


def test_memory_is_bounded_by_lru_eviction():
    idx = PrefixIndex(max_chunks=50)
    old = chunk_keys(prompt("old " * 100), 10)
    idx.insert(old, "w0")
    for i in range(100):
        idx.insert(chunk_keys(prompt(f"{i:04d}" * 100), 10), "w1")
        assert len(idx) <= 50
    assert idx.match(old, {"w0"}) == {}
    assert idx.owned("w0") == 0 and idx.owned("w1") == 50


def test_forget_drops_a_workers_entries():
    idx = PrefixIndex(max_chunks=100)
    keys = chunk_keys(prompt("p" * 100), 10)
    idx.insert(keys, "w0")
    idx.insert(keys, "w1")
    idx.forget("w0")
    assert idx.match(keys, {"w0", "w1"}) == {"w1": 10}
    assert idx.owned("w0") == 0
    idx.insert(keys[:2], "w0")
    assert idx.match(keys, {"w0"}) == {"w0": 2} and idx.owned("w0") == 2
