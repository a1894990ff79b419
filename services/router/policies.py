"""Routing policies: given the routable workers for a model, pick one.

Each policy is a small strategy behind :class:`RoutingPolicy`; the router
keeps one instance per model (:class:`PolicyTable`), chosen in config. A
decision carries an outcome label for the ``llmsvc_router_decisions_total``
metric (``hit``/``miss``/``imbalance`` for prefix routing, ``hit``/``miss``/``load``
for kv-aware routing, ``sticky``/``no_key`` for sessions, ``routed`` otherwise).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, Protocol

from services.common.pb import inference_pb2 as pb

from .config import KV_AWARE_WEIGHTS, RouterSettings, check_kv_aware_weights
from .pool import Worker
from .prefix import PrefixIndex, chunk_keys


class Choice(NamedTuple):
    worker: Worker
    outcome: str


class RoutingPolicy(Protocol):
    name: str

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        """Pick one of ``workers`` (never empty) for ``request``."""
        ...

    def forget(self, address: str) -> None:
        """``address`` restarted or left: drop what the policy remembers about it."""
        ...


def least_loaded(workers: list[Worker]) -> Worker:
    return min(workers, key=lambda w: (w.score, w.address))


class LeastLoadPolicy:
    """The worker with the fewest running plus waiting requests; ties go to the lower KV-cache usage."""

    name = "least_load"

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        return Choice(least_loaded(workers), "routed")

    def forget(self, address: str) -> None:
        pass


class RoundRobinPolicy:
    """Each worker in turn, in address order (stable as workers come and go)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        ordered = sorted(workers, key=lambda w: w.address)
        return Choice(ordered[next(self._counter) % len(ordered)], "routed")

    def forget(self, address: str) -> None:
        pass


def _weight(key: str, address: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{address}".encode(), digest_size=8).digest()


class SessionPolicy:
    """Consistent (rendezvous) hashing of ``session_id``, else ``user``, over the routable workers.

    A session stays on one worker while that worker is routable; when a worker
    leaves, only its own sessions move. Requests without a key go least-load.
    """

    name = "session"

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        key = request.session_id or request.user
        if not key:
            return Choice(least_loaded(workers), "no_key")
        return Choice(max(workers, key=lambda w: _weight(key, w.address)), "sticky")

    def forget(self, address: str) -> None:
        pass


class _PrefixPolicy:
    """What the prefix-routing policies share: an index of which worker saw which prompt prefix."""

    def __init__(self, chunk: int, max_chunks: int) -> None:
        self.chunk = chunk
        self.index = PrefixIndex(max_chunks)

    def _match(self, workers: list[Worker], request: pb.GenerateRequest) -> tuple[list[bytes], dict[str, int]]:
        """The request's chunk keys, and how many leading chunks each of ``workers`` holds (absent: none)."""
        keys = chunk_keys(request, self.chunk)
        return keys, self.index.match(keys, {w.address for w in workers})

    def forget(self, address: str) -> None:
        self.index.forget(address)


class PrefixAwarePolicy(_PrefixPolicy):
    """The worker that most likely holds the prompt's prefix in vLLM's prefix cache.

    The longest indexed prefix wins (ties: less load). With no match the
    request goes to the least-loaded worker, ties to the one with the smaller
    index (emptier cache), so distinct prefixes spread out. When the matched
    worker is overloaded against the idlest one (both ``balance_abs`` more
    requests and ``balance_rel`` times as many) load wins over cache.
    """

    name = "prefix_aware"

    def __init__(self, chunk: int = 128, max_chunks: int = 50_000, balance_abs: float = 4.0,
                 balance_rel: float = 1.5) -> None:
        super().__init__(chunk, max_chunks)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def _imbalanced(self, chosen: Worker, idlest: Worker) -> bool:
        return (chosen.score - idlest.score > self.balance_abs
                and chosen.score > self.balance_rel * idlest.score)

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        keys, depth = self._match(workers, request)
        idlest = least_loaded(workers)
        if depth:
            deepest = max(depth.values())
            best = min((w for w in workers if depth.get(w.address) == deepest), key=lambda w: (w.score, w.address))
            choice = Choice(idlest, "imbalance") if self._imbalanced(best, idlest) else Choice(best, "hit")
        else:
            fresh = min(workers, key=lambda w: (w.score, self.index.owned(w.address), w.address))
            choice = Choice(fresh, "miss")
        self.index.insert(keys, choice.worker.address)
        return choice


class KvAwarePolicy(_PrefixPolicy):
    """The highest weighted sum of three scores in [0, 1] per worker, as llm-d's scheduler combines scorers.

    - ``prefix``: the share of the prompt's chunks the worker holds (the index of ``prefix_aware``);
    - ``queue``: (idlest queue + 1) / (own queue + 1), each worker against the best alternative, so one
      very busy worker does not squeeze the others' differences (as normalising by the busiest would);
    - ``kv``: 1 - KV-cache usage at the last poll;
    - ``adapter``: 1 when the request names a LoRA adapter the worker holds (its last load report lists it,
      or this policy sent the adapter there within ``adapter_memory_s``), else 0; requests without an
      adapter score 0 everywhere, so it changes nothing for them.

    Workers above ``saturation`` KV-cache usage are left out unless all are. Ties go to the shorter
    queue, then the emptier index (distinct prefixes spread out), then the address.
    """

    name = "kv_aware"

    def __init__(self, weights: dict[str, float] | None = None, saturation: float = 0.95, chunk: int = 128,
                 max_chunks: int = 50_000, adapter_memory_s: float = 5.0) -> None:
        super().__init__(chunk, max_chunks)
        self.weights = check_kv_aware_weights(dict(KV_AWARE_WEIGHTS if weights is None else weights))
        self.saturation = saturation
        # (address, adapter) -> when we last sent it there: held until the next load reports say otherwise.
        self.adapter_memory_s = adapter_memory_s
        self._sent_adapters: OrderedDict[tuple[str, str], float] = OrderedDict()

    def holds_adapter(self, worker: Worker, adapter: str) -> bool:
        if not adapter:
            return False
        if adapter in worker.load.adapters:
            return True
        sent = self._sent_adapters.get((worker.address, adapter))
        return sent is not None and time.monotonic() - sent < self.adapter_memory_s

    def scores(self, worker: Worker, idlest_queue: int, depth: dict[str, int], n_chunks: int,
               adapter: str = "") -> dict[str, float]:
        """Each scorer's value in [0, 1] for ``worker`` (higher is better), before weighting."""
        return {"prefix": depth.get(worker.address, 0) / n_chunks if n_chunks else 0.0,
                "queue": (idlest_queue + 1) / (worker.queue + 1),
                "kv": 1.0 - min(max(worker.load.kv_cache_usage, 0.0), 1.0),
                "adapter": 1.0 if self.holds_adapter(worker, adapter) else 0.0}

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        keys, depth = self._match(workers, request)
        unsaturated = [w for w in workers if w.load.kv_cache_usage <= self.saturation] or workers
        idlest_queue = min(w.queue for w in unsaturated)
        adapter = request.adapter.name

        def rank(w: Worker) -> tuple:
            scores = self.scores(w, idlest_queue, depth, len(keys), adapter)
            total = sum(self.weights.get(name, 0.0) * score for name, score in scores.items())
            # Rounded so that float noise does not decide a tie the tie-breakers should.
            return -round(total, 9), w.queue, self.index.owned(w.address), w.address

        best = min(unsaturated, key=rank)
        self.index.insert(keys, best.address)
        if adapter:
            self._remember_adapter(best.address, adapter)
        return Choice(best, _prefix_outcome(best, depth))

    def _remember_adapter(self, address: str, adapter: str) -> None:
        self._sent_adapters[(address, adapter)] = time.monotonic()
        self._sent_adapters.move_to_end((address, adapter))
        while len(self._sent_adapters) > 4096:
            self._sent_adapters.popitem(last=False)

    def forget(self, address: str) -> None:
        super().forget(address)
        for key in [k for k in self._sent_adapters if k[0] == address]:
            del self._sent_adapters[key]


def _prefix_outcome(chosen: Worker, depth: dict[str, int]) -> str:
    """``miss``: no worker held a prefix; ``load``: one held more than ``chosen`` but lost; else ``hit``."""
    if not depth:
        return "miss"
    return "load" if max(depth.values()) > depth.get(chosen.address, 0) else "hit"


def make_policy(name: str, settings: RouterSettings | None = None) -> RoutingPolicy:
    s = settings or RouterSettings()
    factories: dict[str, Callable[[], RoutingPolicy]] = {
        "least_load": LeastLoadPolicy,
        "round_robin": RoundRobinPolicy,
        "session": SessionPolicy,
        "prefix_aware": lambda: PrefixAwarePolicy(s.prefix_chunk_chars, s.prefix_max_chunks,
                                                  s.prefix_balance_abs, s.prefix_balance_rel),
        "kv_aware": lambda: KvAwarePolicy(s.kv_aware_weights, s.kv_aware_saturation, s.prefix_chunk_chars,
                                          s.prefix_max_chunks),
    }
    try:
        return factories[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {sorted(factories)}") from None


class PolicyTable:
    """One policy instance per model (each prefix index is per model), built on first use."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        for name in {settings.policy, *settings.model_policies.values()}:
            make_policy(name, settings)  # fail at start-up on a typo, not on the first request
        self._by_model: dict[str, RoutingPolicy] = {}

    def for_model(self, model: str) -> RoutingPolicy:
        policy = self._by_model.get(model)
        if policy is None:
            name = self.settings.model_policies.get(model, self.settings.policy)
            policy = self._by_model[model] = make_policy(name, self.settings)
        return policy

    def forget(self, address: str) -> None:
        for policy in self._by_model.values():
            policy.forget(address)
