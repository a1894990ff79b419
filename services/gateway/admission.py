"""The gateway's side of auth: one Admit call per request, its usage reported after it (batched).

Admit authenticates the bearer key and reserves the request's budget in the
same call; ReportUsage reconciles the reservation to the tokens actually used
(or releases it when the request failed or was cancelled).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import grpc
from fastapi import Request

from services.common.grpcutil import request_metadata
from services.common.identity import BATCH_LINE_KEY, IDENTITY_KEY, SIGNATURE_KEY, Identity
from services.common.pb import auth_pb2 as pb

from .errors import APIError
from .upstream import Upstreams

log = logging.getLogger(__name__)

def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def rate_limit_headers(state: pb.RateLimitState) -> dict[str, str]:
    if not (state.limit_requests or state.limit_tokens):
        return {}
    return {
        "x-ratelimit-limit-requests": str(state.limit_requests),
        "x-ratelimit-remaining-requests": str(max(0, state.remaining_requests)),
        "x-ratelimit-reset-requests": format_duration(state.reset_requests_s),
        "x-ratelimit-limit-tokens": str(state.limit_tokens),
        "x-ratelimit-remaining-tokens": str(max(0, state.remaining_tokens)),
        "x-ratelimit-reset-tokens": format_duration(state.reset_tokens_s),
    }


@dataclass
class Admission:
    key_id: str
    reservation_id: str
    scopes: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    allowed_models: tuple[str, ...] = ()
    # Outgoing metadata for the calls made for this request: its id and its signed identity.
    metadata: tuple[tuple[str, str], ...] = ()
    # (batch id, line) when the request is a batch's line, sent by the batch runner as the batch's key.
    batch_line: tuple[str, int] | None = None

    def may_use(self, model: str, owned_by: str) -> bool:
        """Whether this key may see and use ``model`` (listed as owned by ``owned_by``): a shared model
        ("llmsvc") or its owner's, within its allow-list; admin keys see every owner's."""
        if self.allowed_models and model not in self.allowed_models:
            return False
        return owned_by in ("", "llmsvc") or self.identity.admin or owned_by == self.identity.owner

    @property
    def identity(self) -> Identity:
        return Identity(owner=self.owner or self.key_id, key_id=self.key_id, admin="admin" in self.scopes)


def batch_line(request: Request) -> tuple[str, int] | None:
    """``<batch id>:<line>`` from the batch runner's header (honoured only with a signed identity)."""
    batch_id, _, line = request.headers.get(BATCH_LINE_KEY, "").rpartition(":")
    return (batch_id, int(line)) if batch_id and line.isdigit() else None


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
            code="invalid_api_key",
        )
    return token.strip()


async def admit(upstreams: Upstreams, request: Request, *, model: str, scope: str, reserve_tokens: int,
                timeout_s: float) -> Admission:
    rid = request.state.request_id
    metadata = request_metadata(rid)
    signed = request.headers.get(IDENTITY_KEY)
    if signed and not request.headers.get("authorization"):
        # A batch line sent by the batch runner as the key that made the batch: the identity is signed with
        # the deployment's internal secret, which auth checks (a forged one is a 401 like a bad key).
        key, as_identity = "", True
        metadata += ((IDENTITY_KEY, signed), (SIGNATURE_KEY, request.headers.get(SIGNATURE_KEY, "")))
    else:
        key, as_identity = bearer_key(request), False
    try:
        resp: pb.AdmitResponse = await upstreams.auth.Admit(
            pb.AdmitRequest(api_key=key, request_id=rid, model=model, scope=scope, reserve_tokens=reserve_tokens,
                            as_identity=as_identity),
            timeout=timeout_s,
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as exc:
        log.warning("auth unavailable: %s", exc.code().name)
        raise APIError(503, "The authentication service is unavailable; retry shortly.", code="auth_unavailable",
                       headers={"retry-after": "1"}) from None
    headers = rate_limit_headers(resp.rate_limit)
    # Every later response to this request carries them (see RateLimitHeadersMiddleware).
    request.scope.setdefault("state", {})["ratelimit_headers"] = headers
    if resp.decision == pb.DECISION_ALLOWED:
        admission = Admission(resp.key_id, resp.reservation_id, list(resp.scopes), headers, resp.owner,
                              tuple(resp.allowed_models))
        admission.metadata = request_metadata(rid) + upstreams.identity.metadata(admission.identity)
        if as_identity:
            admission.batch_line = batch_line(request)
        return admission
    if resp.decision == pb.DECISION_UNAUTHENTICATED:
        raise APIError(401, resp.message or "Incorrect API key provided.", code=resp.code or "invalid_api_key")
    if resp.decision == pb.DECISION_FORBIDDEN:
        raise APIError(403, resp.message or "This key may not do that.", code=resp.code or "permission_denied",
                       param="model" if "model" in (resp.code or "") else None)
    if resp.decision == pb.DECISION_RATE_LIMITED:
        retry = max(1, math.ceil(resp.retry_after_s))
        kind = "tokens" if "token" in resp.code or "quota" in resp.code else "requests"
        raise APIError(429, resp.message or "Rate limit reached.", code=resp.code or "rate_limit_exceeded",
                       type=kind, headers={**headers, "retry-after": str(retry)})
    raise APIError(503, resp.message or "Admission is unavailable; retry shortly.",
                   code=resp.code or "auth_unavailable",
                   headers={"retry-after": str(max(1, math.ceil(resp.retry_after_s or 1)))})


def usage_report(admission: Admission, *, request_id: str, model: str, prompt_tokens: int, completion_tokens: int,
                 status: str, latency_s: float) -> pb.ReportUsageRequest:
    """The usage report of an admitted request (idempotent by its reservation id)."""
    return pb.ReportUsageRequest(
        reservation_id=admission.reservation_id, request_id=request_id, key_id=admission.key_id, model=model,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, status=status, latency_s=latency_s)


def report_usage(upstreams: Upstreams, admission: Admission, **report) -> None:
    """Queue the request's usage for auth (see :class:`.usage_reports.UsageReporter`); the client never waits.
    ``report`` is :func:`usage_report`'s keywords."""
    upstreams.usage_reports.add(usage_report(admission, **report))


class RateLimitHeadersMiddleware:
    """Adds the x-ratelimit-* headers of the request's admission to its response, whatever the route.

    Pure ASGI so streamed bodies pass through untouched; headers a route set itself win.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            extra = scope.get("state", {}).get("ratelimit_headers")
            if message["type"] == "http.response.start" and extra:
                present = {k.lower() for k, _ in message.get("headers", [])}
                added = [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
