"""Revocations pushed to every replica through Redis pub/sub.

The revoking replica publishes the key's prefix; every subscriber drops that
entry from its cache. Pub/sub is at-most-once, so whenever the subscription
(re)starts, every cached entry is expired: anything missed during the gap is
re-read. Without Redis, or when a message is lost, the cache TTL still bounds
how long a revoked key keeps working.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import metrics
from .cache import KeyCache

log = logging.getLogger(__name__)


class Invalidation:
    def __init__(self, cache: KeyCache, client: aioredis.Redis | None, channel: str) -> None:
        self.cache = cache
        self.client = client
        self.channel = channel
        self.subscribed = asyncio.Event()

    async def revoked(self, prefix: str) -> None:
        """Drop ``prefix`` here and tell every other replica."""
        self.cache.invalidate(prefix)
        if self.client is None:
            return
        try:
            await asyncio.wait_for(self.client.publish(self.channel, prefix), 1.0)
        except (TimeoutError, RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            log.warning("could not publish revocation of %s… (other replicas drop it within the cache TTL): %s",
                        prefix, exc)

    async def run(self) -> None:
        """Subscribe and apply invalidations until cancelled; resubscribe after failures."""
        if self.client is None:
            return
        backoff = 0.5
        while True:
            try:
                async with self.client.pubsub() as ps:
                    await ps.subscribe(self.channel)
                    self.cache.expire_all()
                    self.subscribed.set()
                    backoff = 0.5
                    while True:
                        # A bounded wait (not listen()) lets the client's health check ping a silent connection.
                        message = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message and message.get("type") == "message":
                            data = message["data"]
                            self.cache.invalidate(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                metrics.REDIS_ERRORS.inc()
                log.warning("revocation feed lost (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
