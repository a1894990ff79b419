"""Per-replica cache of key records, by public prefix.

Bounds (the revocation guarantee):

* an entry is fresh for ``ttl_s``; after that the next request re-reads the
  database, so a revocation or a changed key reaches every replica within
  ``ttl_s`` even with no Redis at all;
* with Redis, the replica that revokes publishes the prefix and every replica
  drops its entry at once (typically milliseconds);
* while the database is down, an entry verified within ``stale_s`` keeps
  working (expiry is still checked on every request); an unknown key is refused.
  After a failure the database is retried at most every ``retry_s``, so an
  outage does not add the database timeout to every request.

Unknown prefixes are cached too, so a client that keeps sending a wrong key costs one query per
``ttl_s``, not one per request. They live in a small LRU of their own (``max_unknown``): a flood of random
keys evicts other random keys, never the records of real ones (an LRU of at most ``max_entries``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from . import metrics
from .store import KeyRecord, Store, StoreUnavailable


@dataclass(slots=True)
class _Entry:
    record: KeyRecord | None
    verified_at: float
    fresh_until: float


class KeyCache:
    def __init__(self, store: Store, *, ttl_s: float = 5.0, stale_s: float = 3600.0, max_entries: int = 100_000,
                 max_unknown: int = 10_000, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.retry_s = retry_s
        """After a database failure, look-ups skip the database (cache or refuse) for this long."""
        self._db_down_until = 0.0
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self.max_entries = max_entries
        self.clock = clock
        self.max_unknown = max_unknown
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        """Prefixes no key has → until when that answer is fresh."""
        self._inflight: dict[str, asyncio.Future] = {}
        self._generation = 0
        """Bumped by every invalidation, so a read that raced with one is not cached."""

    async def lookup(self, prefix: str) -> KeyRecord | None:
        """The record for ``prefix`` or None if no such key; raises StoreUnavailable if that cannot be known."""
        now = self.clock()
        unknown_until = self._unknown.get(prefix)
        if unknown_until is not None and now < unknown_until:
            self._unknown.move_to_end(prefix)
            metrics.KEY_CACHE.labels("hit").inc()
            return None
        entry = self._entries.get(prefix)
        if entry is not None and now < entry.fresh_until:
            self._entries.move_to_end(prefix)
            metrics.KEY_CACHE.labels("hit").inc()
            return entry.record
        generation = self._generation
        try:
            if now < self._db_down_until:  # don't make every request wait out the database timeout
                raise StoreUnavailable("database marked down after a recent failure")
            record = await self._fetch(prefix)
        except StoreUnavailable:
            if now >= self._db_down_until:
                metrics.DB_ERRORS.inc()
                self._db_down_until = self.clock() + self.retry_s
            if entry is not None and entry.record is not None and now - entry.verified_at < self.stale_s:
                metrics.KEY_CACHE.labels("stale").inc()
                return entry.record
            raise
        metrics.KEY_CACHE.labels("miss").inc()
        if generation == self._generation:
            self._put(prefix, record, self.clock())
        return record

    async def _fetch(self, prefix: str) -> KeyRecord | None:
        """One database read per prefix at a time, however many requests wait for it."""
        fut = self._inflight.get(prefix)
        if fut is None:
            fut = asyncio.ensure_future(self.store.key_by_prefix(prefix))
            self._inflight[prefix] = fut
            fut.add_done_callback(lambda f: (self._inflight.pop(prefix, None), f.cancelled() or f.exception()))
        return await asyncio.shield(fut)

    def _put(self, prefix: str, record: KeyRecord | None, now: float) -> None:
        if record is None:
            self._entries.pop(prefix, None)
            self._unknown[prefix] = now + self.ttl_s
            self._unknown.move_to_end(prefix)
            while len(self._unknown) > self.max_unknown:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(prefix, None)
        self._entries[prefix] = _Entry(record, now, now + self.ttl_s)
        self._entries.move_to_end(prefix)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, prefix: str) -> None:
        """Forget one key entirely (revoked): not even an outage may serve it from cache now."""
        self._generation += 1
        self._entries.pop(prefix, None)
        self._unknown.pop(prefix, None)

    def expire_all(self) -> None:
        """Make every entry re-read on next use, keeping them for outage serving.

        Called when the invalidation feed reconnects: messages sent during the gap are lost.
        """
        self._generation += 1
        for entry in self._entries.values():
            entry.fresh_until = 0.0
        self._unknown.clear()
