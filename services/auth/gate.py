"""The decision behind ``Auth.Admit`` and the bookkeeping behind ``Auth.ReportUsage``.

Admit: format check → key by prefix (cache, then database) → constant-time
hash compare → revoked/expired → scope → model allow-list → one limiter call.
Every 401 carries the same message whatever went wrong, so a caller learns
nothing about which keys exist or how they are stored; the reason is logged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from services.common.db.base import utcnow
from services.common.pb import auth_pb2 as pb

from . import keys, metrics
from .cache import KeyCache
from .guard import GuardedLimiter
from .limiter import Decision
from .store import KeyRecord, StoreUnavailable, UsageRow
from .usage import UsageRecorder

log = logging.getLogger(__name__)

UNAUTHENTICATED_MESSAGE = "Incorrect API key provided. You can find your API key with your administrator."
_LIMIT_TEXT = {
    "rate_limit_requests": "Rate limit reached for requests per minute (limit {rpm})",
    "rate_limit_tokens": "Rate limit reached for tokens per minute (limit {tpm})",
    "tokens_exceed_limit": "This request reserves {reserve} tokens (prompt + max_tokens), more than the key's "
                           "tokens-per-minute limit of {tpm}; lower max_tokens or shorten the prompt",
    "quota_exceeded": "Daily token quota reached (limit {quota} per UTC day)",
    "concurrency_limit": "Too many concurrent requests for this key (limit {conc})",
}


class AuthFailure(Exception):
    """A key that may not be used; ``decision`` is UNAUTHENTICATED, FORBIDDEN or UNAVAILABLE."""

    def __init__(self, decision: int, code: str, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.decision, self.code, self.message, self.retry_after_s = decision, code, message, retry_after_s

    def response(self) -> pb.AdmitResponse:
        return pb.AdmitResponse(decision=self.decision, code=self.code, message=self.message,
                                retry_after_s=self.retry_after_s)


@dataclass(slots=True)
class Gate:
    cache: KeyCache
    limiter: GuardedLimiter
    recorder: UsageRecorder
    _used: dict = field(default_factory=dict, init=False)
    _prefixes: dict = field(default_factory=dict, init=False)
    """key id → its prefix, for admissions as a key id (a batch's lines)."""
    """key id → when it was last admitted, flushed to ``last_used_at`` by the maintenance loop."""

    async def authenticate(self, api_key: str, scope: str) -> KeyRecord:
        """The usable key record for ``api_key`` with ``scope``, or raise :class:`AuthFailure`."""
        if not keys.well_formed(api_key):
            raise self._unauthenticated("malformed", "")
        prefix = keys.prefix(api_key)
        try:
            record = await self.cache.lookup(prefix)
        except StoreUnavailable as exc:
            log.warning("cannot verify key %s…: database unavailable (%s)", prefix, exc)
            raise AuthFailure(pb.DECISION_UNAVAILABLE, "auth_unavailable",
                              "API keys cannot be verified right now; retry shortly.", 1.0) from None
        if record is None or not keys.matches(api_key, record.secret_hash):
            raise self._unauthenticated("unknown", prefix)
        return self._usable(record, scope, prefix)

    async def authenticate_id(self, key_id: str, scope: str) -> KeyRecord:
        """The usable key record with id ``key_id``, for a call that acts as a key without its secret: a batch's
        lines, sent by the batch runner. Read through the key cache as a key with its secret is (a key's prefix
        never changes), so a revocation counts as soon as it does for the key itself."""
        try:
            if not key_id:
                record = None
            elif (prefix := self._prefixes.get(key_id)) is not None:
                record = await self.cache.lookup(prefix)
            elif (record := await self.cache.store.key_by_id(key_id)) is not None:
                if len(self._prefixes) >= 100_000:
                    self._prefixes.clear()
                self._prefixes[key_id] = record.prefix
            if record is not None and record.id != key_id:
                record = None
        except StoreUnavailable as exc:
            log.warning("cannot read key %s: database unavailable (%s)", key_id, exc)
            raise AuthFailure(pb.DECISION_UNAVAILABLE, "auth_unavailable",
                              "API keys cannot be verified right now; retry shortly.", 1.0) from None
        if record is None:
            raise self._unauthenticated("unknown key id", key_id)
        return self._usable(record, scope, key_id)

    def _usable(self, record: KeyRecord, scope: str, label: str) -> KeyRecord:
        if reason := record.unusable_reason(utcnow()):
            raise self._unauthenticated(reason, label)
        if scope not in record.scopes:
            raise AuthFailure(pb.DECISION_FORBIDDEN, "insufficient_scope",
                              f"This API key does not have the '{scope}' scope.")
        return record

    @staticmethod
    def _unauthenticated(reason: str, prefix: str) -> AuthFailure:
        log.info("refused key %s…: %s", prefix or "?", reason)
        return AuthFailure(pb.DECISION_UNAUTHENTICATED, "invalid_api_key", UNAUTHENTICATED_MESSAGE)

    async def admit(self, req: pb.AdmitRequest, as_key_id: str | None = None) -> pb.AdmitResponse:
        """Admit ``req`` for its ``api_key``, or, with ``as_key_id``, for that key (whose id a verified
        internal identity named)."""
        start = time.perf_counter()
        try:
            resp = await self._admit(req, as_key_id)
        finally:
            metrics.ADMIT_LATENCY.observe(time.perf_counter() - start)
        outcome = pb.Decision.Name(resp.decision).removeprefix("DECISION_").lower()
        metrics.DECISIONS.labels(outcome).inc()
        if resp.decision == pb.DECISION_RATE_LIMITED:
            metrics.RATE_LIMITED.labels(resp.code).inc()
        return resp

    async def _admit(self, req: pb.AdmitRequest, as_key_id: str | None) -> pb.AdmitResponse:
        try:
            if as_key_id is None:
                record = await self.authenticate(req.api_key, req.scope or "chat")
            else:
                record = await self.authenticate_id(as_key_id, req.scope or "chat")
        except AuthFailure as failure:
            return failure.response()
        if req.model and record.allowed_models and req.model not in record.allowed_models:
            return pb.AdmitResponse(decision=pb.DECISION_FORBIDDEN, code="model_not_allowed",
                                    message=f"This API key may not use the model '{req.model[:200]}'.")
        reserve = max(0, req.reserve_tokens)
        decision = await self.limiter.admit(record.id, record.limits, reserve)
        if decision is None:
            return pb.AdmitResponse(decision=pb.DECISION_UNAVAILABLE, code="rate_limiter_unavailable",
                                    message="Rate limits cannot be checked right now; retry shortly.",
                                    retry_after_s=self.limiter.retry_s)
        self._used[record.id] = utcnow()
        return self._response(record, decision, reserve)

    @staticmethod
    def _response(record: KeyRecord, d: Decision, reserve: int) -> pb.AdmitResponse:
        s = d.state
        state = pb.RateLimitState(limit_requests=s.limit_requests, remaining_requests=s.remaining_requests,
                                  reset_requests_s=s.reset_requests_s, limit_tokens=s.limit_tokens,
                                  remaining_tokens=s.remaining_tokens, reset_tokens_s=s.reset_tokens_s)
        if d.allowed:
            return pb.AdmitResponse(decision=pb.DECISION_ALLOWED, rate_limit=state, key_id=record.id,
                                    reservation_id=d.reservation_id, scopes=list(record.scopes),
                                    owner=record.owner or record.id, allowed_models=list(record.allowed_models))
        lim = record.limits
        text = _LIMIT_TEXT.get(d.code, "Rate limit reached").format(
            rpm=lim.rpm, tpm=lim.tpm, quota=lim.daily_tokens, conc=lim.max_concurrent, reserve=reserve)
        message = text + ("." if d.code == "tokens_exceed_limit" else f". Retry after {math.ceil(d.retry_after_s)}s.")
        return pb.AdmitResponse(decision=pb.DECISION_RATE_LIMITED, code=d.code, message=message, rate_limit=state,
                                retry_after_s=d.retry_after_s, key_id=record.id)

    async def report(self, req: pb.ReportUsageRequest) -> str:
        """Settle the reservation to the tokens used and record the usage; returns the record's outcome."""
        await self.settle(req)
        return await self.recorder.record(UsageRow.from_report(req))

    async def settle(self, req: pb.ReportUsageRequest) -> None:
        """Replace the report's reservation with the tokens it used (idempotent: a second settle is a no-op)."""
        if req.reservation_id:
            await self.limiter.settle(req.key_id, req.reservation_id,
                                      max(0, req.prompt_tokens) + max(0, req.completion_tokens))

    def take_used(self) -> dict:
        """Keys used since the last call, with when (for ``last_used_at``)."""
        used, self._used = self._used, {}
        return used
