"""Routing policies: given the routable workers for a model, pick one.

Each policy is a small strategy behind :class:`RoutingPolicy`; the router
keeps one instance per model (:class:`PolicyTable`), chosen in config. A
decision carries an outcome label for the ``llmsvc_router_decisions_total``
metric (``hit``/``miss``/``imbalance`` for prefix routing, ``sticky``/``no_key``
for sessions, ``routed`` otherwise).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import NamedTuple, Protocol

from services.common.pb import inference_pb2 as pb

from .config import RouterSettings
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


class PrefixAwarePolicy:
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
        self.chunk = chunk
        self.index = PrefixIndex(max_chunks)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def _imbalanced(self, chosen: Worker, idlest: Worker) -> bool:
        return (chosen.score - idlest.score > self.balance_abs
                and chosen.score > self.balance_rel * idlest.score)

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Choice:
        keys = chunk_keys(request, self.chunk)
        depth = self.index.match(keys, {w.address for w in workers})
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

    def forget(self, address: str) -> None:
        self.index.forget(address)


def make_policy(name: str, settings: RouterSettings | None = None) -> RoutingPolicy:
    s = settings or RouterSettings()
    factories: dict[str, Callable[[], RoutingPolicy]] = {
        "least_load": LeastLoadPolicy,
        "round_robin": RoundRobinPolicy,
        "session": SessionPolicy,
        "prefix_aware": lambda: PrefixAwarePolicy(s.prefix_chunk_chars, s.prefix_max_chunks,
                                                  s.prefix_balance_abs, s.prefix_balance_rel),
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
