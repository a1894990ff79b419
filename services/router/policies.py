"""Routing policies: given the routable workers for a model, pick one."""

from __future__ import annotations

from typing import Protocol

from services.common.pb import inference_pb2 as pb

from .pool import Worker


class RoutingPolicy(Protocol):
    name: str

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Worker:
        """Pick one of ``workers`` (never empty) for ``request``."""
        ...


class LeastLoadPolicy:
    """The worker with the fewest running plus waiting requests; ties go to the lower KV-cache usage."""

    name = "least_load"

    def choose(self, workers: list[Worker], request: pb.GenerateRequest) -> Worker:
        return min(workers, key=lambda w: (w.score, w.address))


POLICIES: dict[str, type] = {LeastLoadPolicy.name: LeastLoadPolicy}


def make_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}") from None
