"""The in-process limiter: the embedded default, with the semantics of :mod:`.base`.

Exact for one auth process (``llmsvc up``). It holds no lock: every method
runs to completion without awaiting, so on one event loop each admission is
atomic. With several auth replicas it is per replica, which the service says
in its start-up log and the ``llmsvc_auth_limiter_backend`` metric.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import (
    CONCURRENCY_RETRY_S,
    DAY_S,
    DEFAULT_WINDOW,
    Decision,
    Limiter,
    Limits,
    RateState,
    WindowConfig,
    new_reservation_id,
    worst,
)


@dataclass(slots=True)
class _Reservation:
    key_id: str
    day: int
    reserved: int
    expires_at: float


@dataclass(slots=True)
class _KeyWindow:
    requests: deque = field(default_factory=deque)
    """Admission times, oldest first."""
    tokens: OrderedDict = field(default_factory=OrderedDict)
    """reservation id → [admitted_at, tokens], oldest first."""
    token_sum: int = 0
    inflight: dict = field(default_factory=dict)
    """reservation id → lease deadline."""
    days: dict = field(default_factory=dict)
    """UTC day number → tokens counted against that day's quota."""
    touched: float = 0.0


class MemoryLimiter(Limiter):
    backend = "m"

    def __init__(self, cfg: WindowConfig = DEFAULT_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self._keys: dict[str, _KeyWindow] = {}
        self._reservations: OrderedDict[str, _Reservation] = OrderedDict()

    def _evict(self, w: _KeyWindow, now: float) -> None:
        horizon = now - self.cfg.window_s
        while w.requests and w.requests[0] <= horizon:
            w.requests.popleft()
        while w.tokens:
            rid, (at, amount) = next(iter(w.tokens.items()))
            if at > horizon:
                break
            w.tokens.popitem(last=False)
            w.token_sum -= amount
        for rid in [r for r, deadline in w.inflight.items() if deadline <= now]:
            del w.inflight[rid]
        day = int(now // DAY_S)
        for d in [d for d in w.days if d < day - 1]:
            del w.days[d]

    def _token_wait(self, w: _KeyWindow, reserve: int, limit: int, now: float) -> float:
        freed = 0
        for at, amount in w.tokens.values():
            freed += amount
            if w.token_sum - freed + reserve <= limit:
                return at + self.cfg.window_s - now
        return self.cfg.window_s

    def _failures(self, w: _KeyWindow, lim: Limits, reserve: int, now: float) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        window = self.cfg.window_s
        if lim.max_concurrent and reserve > 0 and len(w.inflight) >= lim.max_concurrent:
            out.append(("concurrency_limit", CONCURRENCY_RETRY_S))
        n = len(w.requests)
        if n + 1 > lim.rpm:
            out.append(("rate_limit_requests", w.requests[n - lim.rpm] + window - now))
        if w.token_sum + reserve > lim.tpm:
            if reserve > lim.tpm:
                out.append(("tokens_exceed_limit", window))
            else:
                out.append(("rate_limit_tokens", self._token_wait(w, reserve, lim.tpm, now)))
        day = int(now // DAY_S)
        if lim.daily_tokens and w.days.get(day, 0) + reserve > lim.daily_tokens:
            out.append(("quota_exceeded", (day + 1) * DAY_S - now))
        return out

    def _state(self, w: _KeyWindow, lim: Limits, now: float) -> RateState:
        window = self.cfg.window_s
        newest_token = next(reversed(w.tokens.values()))[0] if w.tokens else None
        return RateState(
            limit_requests=lim.rpm, remaining_requests=max(0, lim.rpm - len(w.requests)),
            reset_requests_s=(w.requests[-1] + window - now) if w.requests else 0.0,
            limit_tokens=lim.tpm, remaining_tokens=max(0, lim.tpm - w.token_sum),
            reset_tokens_s=(newest_token + window - now) if newest_token is not None else 0.0,
        )

    async def admit(self, key_id: str, limits: Limits, reserve_tokens: int) -> Decision:
        now = self.clock()
        self._expire_reservations(now)
        w = self._keys.setdefault(key_id, _KeyWindow())
        w.touched = now
        self._evict(w, now)
        code, wait = worst(self._failures(w, limits, reserve_tokens, now))
        if code:
            return Decision(False, code, wait, self._state(w, limits, now))
        rid = new_reservation_id(self.backend)
        w.requests.append(now)
        if reserve_tokens > 0:
            day = int(now // DAY_S)
            w.tokens[rid] = [now, reserve_tokens]
            w.token_sum += reserve_tokens
            w.inflight[rid] = now + self.cfg.lease_s
            w.days[day] = w.days.get(day, 0) + reserve_tokens
            expires = now + self.cfg.lease_s + self.cfg.window_s
            self._reservations[rid] = _Reservation(key_id, day, reserve_tokens, expires)
        return Decision(True, "", 0.0, self._state(w, limits, now), rid if reserve_tokens > 0 else "")

    async def settle(self, key_id: str, reservation_id: str, used_tokens: int) -> bool:
        res = self._reservations.pop(reservation_id, None)
        w = self._keys.get(key_id)
        if res is None or w is None or res.key_id != key_id:
            return False
        delta = used_tokens - res.reserved
        entry = w.tokens.get(reservation_id)
        if entry is not None:
            entry[1] = used_tokens
            w.token_sum += delta
        w.inflight.pop(reservation_id, None)
        if res.day in w.days:
            w.days[res.day] += delta
        return True

    def _expire_reservations(self, now: float) -> None:
        """Drop reservations past their lease and keys idle for longer than any window."""
        while self._reservations:
            rid, res = next(iter(self._reservations.items()))
            if res.expires_at > now:
                break
            self._reservations.popitem(last=False)
        idle = now - max(self.cfg.lease_s, DAY_S * 2)
        if len(self._keys) > 1024:
            for k in [k for k, w in self._keys.items() if w.touched < idle]:
                del self._keys[k]
