"""The Redis outage policy around the shared limiter.

``closed`` (the default): while Redis is unreachable, admissions are refused
with 503 + retry-after, so no key can exceed its limits anywhere.
``open``: admissions continue under the in-process limiter, i.e. limits are
per replica (N replicas may admit up to N× a limit) until Redis is back.

Either way the switch is loud: one warning log line per transition, the
``llmsvc_auth_limiter_degraded{policy}`` gauge at 1 while it lasts, and
``llmsvc_auth_redis_errors_total``. After a failure, Redis is retried at most
every ``retry_s`` by one request at a time, so a dead Redis does not add its
timeout to every request.

A settlement that cannot reach Redis is kept (up to ``MAX_PENDING``) and replayed as soon as Redis answers
again, before the next admission: a key with ``max_concurrent`` gets its slots back at once instead of
waiting out the reservations' lease. Settling is idempotent, so one replayed twice changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Literal

from . import metrics
from .limiter import Decision, Limiter, LimiterUnavailable, Limits, MemoryLimiter

log = logging.getLogger(__name__)
Policy = Literal["closed", "open"]
MAX_PENDING = 100_000


class GuardedLimiter:
    def __init__(self, shared: Limiter | None, local: MemoryLimiter, policy: Policy = "closed",
                 retry_s: float = 1.0) -> None:
        self.shared = shared
        self.local = local
        self.policy = policy
        self.retry_s = retry_s
        self._down_until = 0.0
        self._probing = False
        self.degraded = False
        # reservation id -> (key id, tokens used): settlements Redis missed, oldest first
        self.pending: OrderedDict[str, tuple[str, int]] = OrderedDict()
        metrics.LIMITER_BACKEND.labels("redis" if shared else "memory").set(1)
        metrics.LIMITER_DEGRADED.labels(policy).set(0)

    def _may_try(self) -> bool:
        """Healthy: always. Degraded: one probe at a time, every ``retry_s`` (the others apply the policy)."""
        return not self.degraded or (not self._probing and time.monotonic() >= self._down_until)

    def _mark_down(self, exc: Exception) -> None:
        metrics.REDIS_ERRORS.inc()
        self._down_until = time.monotonic() + self.retry_s
        if not self.degraded:
            self.degraded = True
            metrics.LIMITER_DEGRADED.labels(self.policy).set(1)
            effect = ("refusing requests with 503" if self.policy == "closed"
                      else "limits are now PER REPLICA (in-process)")
            log.warning("rate-limit backend unavailable (%s); policy=%s: %s", exc, self.policy, effect)

    def _mark_up(self) -> None:
        self._down_until = 0.0  # a failure of a call that started before this success must not linger
        if self.degraded:
            self.degraded = False
            metrics.LIMITER_DEGRADED.labels(self.policy).set(0)
            log.warning("rate-limit backend is back; limits are shared again")

    async def admit(self, key_id: str, limits: Limits, reserve_tokens: int) -> Decision | None:
        """The decision, or None when Redis is down and the policy is closed."""
        if self.shared is None:
            return await self.local.admit(key_id, limits, reserve_tokens)
        if self._may_try():
            probe = self.degraded
            self._probing |= probe
            try:
                if self.pending:
                    await self._replay_pending()
                decision = await self.shared.admit(key_id, limits, reserve_tokens)
                self._mark_up()
                return decision
            except LimiterUnavailable as exc:
                self._mark_down(exc)
            finally:
                if probe:
                    self._probing = False
        if self.policy == "closed":
            return None
        return await self.local.admit(key_id, limits, reserve_tokens)

    async def settle(self, key_id: str, reservation_id: str, used_tokens: int) -> bool:
        """Settle where the reservation was made; a lost settle only over-counts until the window passes."""
        if reservation_id.startswith(self.local.backend + "."):
            return await self.local.settle(key_id, reservation_id, used_tokens)
        if self.shared is None or not reservation_id:
            return False
        if self.degraded:
            self._keep(key_id, reservation_id, used_tokens)
            return False
        try:
            return await self.shared.settle(key_id, reservation_id, used_tokens)
        except LimiterUnavailable as exc:
            self._mark_down(exc)
            self._keep(key_id, reservation_id, used_tokens)
            return False

    def _keep(self, key_id: str, reservation_id: str, used_tokens: int) -> None:
        self.pending[reservation_id] = (key_id, used_tokens)
        if len(self.pending) > MAX_PENDING:
            dropped, _ = self.pending.popitem(last=False)
            log.warning("more than %d settlements wait for Redis; %s counts until its lease ends", MAX_PENDING,
                        dropped)
        metrics.SETTLES_PENDING.set(len(self.pending))

    async def _replay_pending(self) -> None:
        """Settle what Redis missed, oldest first; a failure stops it (the rest stay for the next try)."""
        replayed = 0
        while self.pending:
            rid, (key_id, used) = next(iter(self.pending.items()))
            await self.shared.settle(key_id, rid, used)  # LimiterUnavailable propagates: still down
            self.pending.pop(rid, None)
            replayed += 1
        metrics.SETTLES_PENDING.set(0)
        log.warning("rate-limit backend is back: replayed %d settlements it missed", replayed)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
