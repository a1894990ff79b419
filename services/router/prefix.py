"""The prefix index behind ``prefix_aware`` routing.

The router never tokenizes, so it approximates vLLM's block-level prefix cache
on what it does see: the request rendered to text (chat messages or a prompt)
or its token ids, cut into fixed-size chunks. Each chunk's key hashes the
previous key with the chunk, so one key stands for the whole prefix up to the
end of that chunk, as a block hash does in vLLM. Only full chunks are indexed:
vLLM caches only full blocks too.

The index maps chunk keys to the workers that recently saw them, in LRU order,
and holds at most ``max_chunks`` keys (about 150 bytes each in CPython), so its
memory is bounded whatever the traffic. It is a guess about the workers'
caches, never a source of truth: a stale entry costs one cache miss, not a
wrong answer, which is why router replicas need not share it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter, OrderedDict

from services.common.pb import inference_pb2 as pb

_SEP_MSG, _SEP_FIELD = "\x1e", "\x1f"


def render(request: pb.GenerateRequest) -> bytes:
    """The request's input as bytes in a stable layout (chat messages are joined in order)."""
    kind = request.WhichOneof("input")
    if kind == "chat":
        # Offered tools come first, as templates render them before the conversation.
        parts = [request.chat.tools_json]
        for m in request.chat.messages:
            parts.append(f"{_SEP_MSG}{m.role}{_SEP_FIELD}{m.name}{_SEP_FIELD}{m.content}")
            parts.extend(f"{_SEP_FIELD}{c.name}{_SEP_FIELD}{c.arguments}" for c in m.tool_calls)
        return "".join(parts).encode("utf-8", "surrogatepass")
    if kind == "prompt":
        return request.prompt.encode("utf-8", "surrogatepass")
    if kind == "prompt_token_ids":
        # 4 bytes per id, so a chunk of `chunk` ids is 4 × chunk bytes.
        return array("i", request.prompt_token_ids.ids).tobytes()
    return b""


def chunk_keys(request: pb.GenerateRequest, chunk: int) -> list[bytes]:
    """Chained keys of the full chunks of the request's input (chars, or token ids)."""
    data = render(request)
    size = chunk * 4 if request.WhichOneof("input") == "prompt_token_ids" else chunk
    keys: list[bytes] = []
    prev = b""
    for start in range(0, len(data) - size + 1, size):
        prev = hashlib.blake2b(prev + data[start:start + size], digest_size=8).digest()
        keys.append(prev)
    return keys


class PrefixIndex:
    """Chunk key → workers that saw it, LRU-bounded to ``max_chunks`` keys."""

    def __init__(self, max_chunks: int) -> None:
        self.max_chunks = max(1, max_chunks)
        # key -> {worker address: epoch of that worker when it saw the key}
        self._entries: OrderedDict[bytes, dict[str, int]] = OrderedDict()
        self._epoch: dict[str, int] = {}
        self._owned: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def owned(self, worker: str) -> int:
        """Chunks indexed for ``worker`` (a proxy for how full its cache is)."""
        return self._owned[worker]

    def match(self, keys: list[bytes], candidates: set[str]) -> dict[str, int]:
        """How many leading chunks each candidate holds; workers without a match are absent."""
        depth: dict[str, int] = {}
        for i, key in enumerate(keys):
            holders = self._entries.get(key)
            live = [w for w, ep in (holders or {}).items() if w in candidates and ep == self._epoch.get(w, 0)]
            if not live:
                break
            for w in live:
                depth[w] = i + 1
        return depth

    def insert(self, keys: list[bytes], worker: str) -> None:
        epoch = self._epoch.get(worker, 0)
        for key in keys:
            holders = self._entries.get(key)
            if holders is None:
                holders = self._entries[key] = {}
            else:
                self._entries.move_to_end(key)
            if holders.get(worker) != epoch:
                holders[worker] = epoch
                self._owned[worker] += 1
        while len(self._entries) > self.max_chunks:
            _, holders = self._entries.popitem(last=False)
            for w, ep in holders.items():
                if ep == self._epoch.get(w, 0):
                    self._owned[w] -= 1

    def forget(self, worker: str) -> None:
        """Drop what we believe ``worker`` caches (it restarted or was replaced); entries age out lazily."""
        self._epoch[worker] = self._epoch.get(worker, 0) + 1
        self._owned[worker] = 0
