"""Backpressure: a bounded admission queue per model.

A model may have ``max_in_flight_per_worker × routable workers`` requests
dispatched at once. Past that, requests wait in a queue ordered by priority
(interactive before batch, then arrival), which holds at most ``queue_size``
requests; batch requests may fill only ``batch_queue_share`` of it, so
interactive ones keep headroom. A request that finds the queue full, or waits
longer than ``queue_timeout_s`` (or its own deadline), is refused at once with
:class:`Rejected`, which the servicer turns into RESOURCE_EXHAUSTED and a
``retry-after`` estimate: never an unbounded queue, never a hung client.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from prometheus_client import Counter, Gauge

QUEUED = Gauge("llmsvc_router_queue_depth", "Requests waiting in the router's admission queue.", ["model"])
ADMITTED = Gauge("llmsvc_router_in_flight", "Requests the router has dispatched to workers.", ["model"])
REJECTED = Counter("llmsvc_router_rejected_total", "Requests refused by backpressure, by priority class and reason.",
                   ["model", "priority", "outcome"])


class Rejected(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def priority_class(priority: int) -> str:
    return "interactive" if priority <= 0 else "batch"


class ModelQueue:
    """Slots and waiters of one model. All methods run on the event loop (no locks needed)."""

    def __init__(self, model: str, capacity: Callable[[], int], queue_size: int, batch_share: float) -> None:
        self.model = model
        self.capacity = capacity
        self.queue_size = queue_size
        self.batch_limit = max(0, math.floor(queue_size * batch_share))
        self.in_flight = 0
        self.queued = 0
        self._heap: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()
        # Mean seconds a request holds its slot (EWMA), for the retry-after estimate.
        self.mean_hold_s = 1.0
        # Series exist (at 0) from the moment the model is known, not from its first queued request.
        QUEUED.labels(model).set(0)
        ADMITTED.labels(model).set(0)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take one more, at least 1."""
        slots = max(1, self.capacity())
        return int(min(60, max(1, math.ceil((self.queued + 1) * self.mean_hold_s / slots))))

    def _reject(self, priority: int, outcome: str, message: str) -> Rejected:
        REJECTED.labels(self.model, priority_class(priority), outcome).inc()
        return Rejected(message, self.retry_after())

    async def acquire(self, priority: int, timeout_s: float) -> None:
        self.pump()  # capacity may have grown since the last release
        if self.in_flight < self.capacity() and not self.queued:
            self._grant()
            return
        limit = self.queue_size if priority <= 0 else self.batch_limit
        if self.queued >= limit:
            raise self._reject(priority, "queue_full", f"The model '{self.model}' is overloaded; "
                               f"{self.in_flight} requests are running and {self.queued} are queued.")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._seq), fut))
        self._set_queued(+1)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            self._set_queued(-1)
            raise self._reject(priority, "queue_timeout", f"The model '{self.model}' is overloaded; "
                               f"the request waited {timeout_s:.1f}s for a slot.") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(0.0)  # granted just as the caller went away
            else:
                self._set_queued(-1)
            raise

    def _grant(self) -> None:
        self.in_flight += 1
        ADMITTED.labels(self.model).set(self.in_flight)

    def _set_queued(self, delta: int) -> None:
        self.queued += delta
        QUEUED.labels(self.model).set(self.queued)

    def release(self, held_s: float) -> None:
        self.in_flight -= 1
        ADMITTED.labels(self.model).set(self.in_flight)
        if held_s > 0:
            self.mean_hold_s += 0.1 * (held_s - self.mean_hold_s)
        self.pump()

    def pump(self) -> None:
        """Hand free slots to waiters, most urgent first; skips waiters that already gave up."""
        while self._heap and self.in_flight < self.capacity():
            _, _, fut = heapq.heappop(self._heap)
            if fut.done():
                continue
            self._set_queued(-1)
            self._grant()
            fut.set_result(None)


class AdmissionControl:
    """The queues of every model; ``capacity_of(model)`` says how many requests may run at once."""

    def __init__(self, capacity_of: Callable[[str], int], queue_size: int, queue_timeout_s: float,
                 batch_share: float) -> None:
        self.capacity_of = capacity_of
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.batch_share = batch_share
        self.queues: dict[str, ModelQueue] = {}

    def queue(self, model: str) -> ModelQueue:
        q = self.queues.get(model)
        if q is None:
            q = self.queues[model] = ModelQueue(model, lambda: self.capacity_of(model), self.queue_size,
                                                self.batch_share)
        return q

    def know(self, models: Iterable[str]) -> None:
        """Models a worker serves: give each its queue (and its gauges, at 0) before any request."""
        for model in models:
            self.queue(model)

    def wake(self) -> None:
        """Capacity may have grown (a worker was admitted): let waiters in."""
        for q in self.queues.values():
            q.pump()

    @asynccontextmanager
    async def slot(self, model: str, priority: int, deadline_s: float | None) -> AsyncIterator[None]:
        q = self.queue(model)
        timeout = self.queue_timeout_s if deadline_s is None else max(0.0, min(self.queue_timeout_s, deadline_s))
        await q.acquire(priority, timeout)
        start = time.monotonic()
        try:
            yield
        finally:
            q.release(time.monotonic() - start)
