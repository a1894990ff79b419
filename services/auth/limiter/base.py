"""The limiter interface and the semantics both backends implement.

Per key, over a sliding window of ``window_s`` seconds (60 for RPM/TPM):

* requests: at most ``rpm`` admissions in any window (a sliding log, not a fixed window);
* tokens: at most ``tpm`` tokens in any window, where an admission counts its
  reservation until :meth:`Limiter.settle` replaces it with the tokens actually used;
* daily quota: at most ``daily_tokens`` tokens per UTC day, reserved and settled the same way;
* concurrency: at most ``max_concurrent`` admissions with tokens that are not yet settled
  (a lease of ``lease_s`` frees a slot whose ReportUsage never came).

An admission with ``reserve_tokens == 0`` (listing models, admin calls) counts
as a request only: it holds no tokens, no slot and needs no settle.
A denial names the limit and the exact time until it has room; when several
limits are hit, the longest wait wins, since all of them must have room.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

DAY_S = 86_400.0
CONCURRENCY_RETRY_S = 1.0
"""A slot frees when some request ends, which nobody can predict; ask for a short retry."""


class LimiterUnavailable(Exception):
    """The shared backend (Redis) could not be reached; the caller applies its outage policy."""


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int
    tpm: int
    daily_tokens: int = 0
    """0: no daily quota."""
    max_concurrent: int = 0
    """0: no cap."""


@dataclass(slots=True)
class RateState:
    limit_requests: int = 0
    remaining_requests: int = 0
    reset_requests_s: float = 0.0
    """Seconds until the request window is empty again (OpenAI's "reset to initial state")."""
    limit_tokens: int = 0
    remaining_tokens: int = 0
    reset_tokens_s: float = 0.0


@dataclass(slots=True)
class Decision:
    allowed: bool
    code: str = ""
    """"" when allowed; else rate_limit_requests, rate_limit_tokens, tokens_exceed_limit,
    quota_exceeded or concurrency_limit."""
    retry_after_s: float = 0.0
    state: RateState = field(default_factory=RateState)
    reservation_id: str = ""
    """Handle for :meth:`Limiter.settle`; empty when nothing was reserved."""


@dataclass(frozen=True, slots=True)
class WindowConfig:
    window_s: float = 60.0
    lease_s: float = 900.0
    """How long an unsettled admission holds its concurrency slot and reservation record."""


DEFAULT_WINDOW = WindowConfig()
"""The window limiters use when none is given (immutable, so one shared instance is safe)."""


def new_reservation_id(backend: str) -> str:
    """``<backend>.<96 random bits>``: the backend letter routes settle to where the reservation lives."""
    return f"{backend}.{secrets.token_hex(12)}"


def worst(failures: list[tuple[str, float]]) -> tuple[str, float]:
    """The failure with the longest wait (first listed wins a tie)."""
    code, wait = "", -1.0
    for c, w in failures:
        if w > wait:
            code, wait = c, w
    return code, max(0.0, wait)


class Limiter(ABC):
    """Admission and settlement of one key's budget."""

    backend: str
    """One letter used in reservation ids: ``r`` (Redis) or ``m`` (in-process)."""

    @abstractmethod
    async def admit(self, key_id: str, limits: Limits, reserve_tokens: int) -> Decision:
        """Atomically check every limit and, if all have room, record the admission."""

    @abstractmethod
    async def settle(self, key_id: str, reservation_id: str, used_tokens: int) -> bool:
        """Replace the reservation with the tokens used and free the slot; False if unknown (idempotent)."""

    async def close(self) -> None:
        return None
