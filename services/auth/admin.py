"""gRPC ``llmsvc.v1.AuthAdmin``: create, list, revoke keys and read their usage.

Every call is authenticated by :class:`AdminAuthInterceptor` from the
``authorization: Bearer <key>`` metadata through the same path as Admit, and
needs the ``admin`` scope. Inputs are validated here (the gateway validates
too, but this service is the authority); all SQL is parameterised.
"""

from __future__ import annotations

import contextvars
import logging
import re
from datetime import UTC, datetime, timedelta

import grpc

from services.common.db.base import utcnow
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .gate import AuthFailure, Gate
from .invalidation import Invalidation
from .store import SCOPES, KeyRecord, KeySpec, Store, StoreUnavailable

log = logging.getLogger(__name__)
ADMIN_SERVICE = "llmsvc.v1.AuthAdmin"
actor_var: contextvars.ContextVar[str] = contextvars.ContextVar("admin_actor", default="")
_KEY_ID = re.compile(r"[0-9a-f]{32}|bootstrap")
_TO_GRPC = {pb.DECISION_UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
            pb.DECISION_FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
            pb.DECISION_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE}
MAX_USAGE_DAYS = 366


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires a key with the ``admin`` scope on every AuthAdmin call."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or not details.method.startswith(f"/{ADMIN_SERVICE}/"):
            return handler
        inner, gate = handler.unary_unary, self.gate

        async def guarded(request, context: grpc.aio.ServicerContext):
            scheme, _, token = dict(context.invocation_metadata() or ()).get("authorization", "").partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise AuthFailure(pb.DECISION_UNAUTHENTICATED, "invalid_api_key", "A bearer key is required.")
                record = await gate.authenticate(token.strip(), "admin")
            except AuthFailure as failure:
                await context.abort(_TO_GRPC.get(failure.decision, grpc.StatusCode.UNAVAILABLE), failure.message)
            actor_var.set(record.id)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, handler.request_deserializer, handler.response_serializer)


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else ""


def key_info(r: KeyRecord) -> pb.KeyInfo:
    return pb.KeyInfo(id=r.id, prefix=r.prefix, name=r.name, owner=r.owner, scopes=list(r.scopes),
                      allowed_models=list(r.allowed_models), rpm=r.limits.rpm, tpm=r.limits.tpm,
                      daily_token_quota=r.limits.daily_tokens, max_concurrent=r.limits.max_concurrent,
                      expires_at=_ts(r.expires_at), revoked_at=_ts(r.revoked_at), created_at=_ts(r.created_at),
                      last_used_at=_ts(r.last_used_at))


def _text(value: str, field: str, limit: int = 200, required: bool = False) -> str:
    if required and not value.strip():
        raise ValueError(f"{field} is required")
    if len(value) > limit or not value.isprintable():
        raise ValueError(f"{field} must be printable text of at most {limit} characters")
    return value


def _bounded(value: int, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"{field} must be between {low} and {high}")
    return value


def key_spec(req: pb.CreateKeyRequest) -> KeySpec:
    """Validate a CreateKey request; raises ValueError with a message fit for the caller."""
    spec = KeySpec(name=_text(req.name, "name", required=True), owner=_text(req.owner, "owner"))
    scopes = list(dict.fromkeys(req.scopes)) or ["chat"]
    if bad := [s for s in scopes if s not in SCOPES]:
        raise ValueError(f"unknown scope {bad[0][:40]!r}; choose from {', '.join(SCOPES)}")
    spec.scopes = scopes
    if len(req.allowed_models) > 100:
        raise ValueError("allowed_models holds at most 100 names")
    spec.allowed_models = [_text(m, "allowed_models[]", required=True) for m in dict.fromkeys(req.allowed_models)]
    spec.rpm = _bounded(req.rpm, "rpm", 1, 10_000_000) if req.rpm else spec.rpm
    spec.tpm = _bounded(req.tpm, "tpm", 1, 10**12) if req.tpm else spec.tpm
    spec.daily_token_quota = _bounded(req.daily_token_quota, "daily_token_quota", 0, 10**15) or None
    spec.max_concurrent = _bounded(req.max_concurrent, "max_concurrent", 0, 1_000_000) or None
    if req.expires_at:
        try:
            at = datetime.fromisoformat(req.expires_at.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expires_at must be an RFC 3339 timestamp") from None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        if at <= utcnow():
            raise ValueError("expires_at must be in the future")
        spec.expires_at = at
    return spec


class AdminServicer(auth_pb2_grpc.AuthAdminServicer):
    def __init__(self, store: Store, invalidation: Invalidation) -> None:
        self.store = store
        self.invalidation = invalidation

    async def _key(self, key_id: str, context) -> KeyRecord:
        record = await self.store.key_by_id(key_id) if _KEY_ID.fullmatch(key_id) else None
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "No such key.")
        return record

    async def CreateKey(self, request: pb.CreateKeyRequest, context) -> pb.CreateKeyResponse:
        try:
            spec = key_spec(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        record, secret = await _or_unavailable(self.store.create_key(spec, actor_var.get()), context)
        log.info("admin %s created key %s (%s…)", actor_var.get(), record.id, record.prefix)
        return pb.CreateKeyResponse(key=key_info(record), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context) -> pb.ListKeysResponse:
        records = await _or_unavailable(
            self.store.list_keys(request.owner or None, request.include_revoked), context)
        return pb.ListKeysResponse(keys=[key_info(r) for r in records])

    async def GetKey(self, request: pb.KeyRef, context) -> pb.KeyInfo:
        return key_info(await _or_unavailable(self._key(request.key_id, context), context))

    async def RevokeKey(self, request: pb.KeyRef, context) -> pb.KeyInfo:
        record = None
        if _KEY_ID.fullmatch(request.key_id):
            record = await _or_unavailable(self.store.revoke_key(request.key_id, actor_var.get()), context)
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "No such key.")
        await self.invalidation.revoked(record.prefix)
        log.info("admin %s revoked key %s (%s…)", actor_var.get(), record.id, record.prefix)
        return key_info(record)

    async def GetKeyUsage(self, request: pb.GetKeyUsageRequest, context) -> pb.GetKeyUsageResponse:
        days = request.days or 30
        if not 1 <= days <= MAX_USAGE_DAYS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"days must be between 1 and {MAX_USAGE_DAYS}")
        record = await _or_unavailable(self._key(request.key_id, context), context)
        today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        buckets = await _or_unavailable(self.store.usage_summary(record.id, today - timedelta(days=days - 1)),
                                        context)
        out = pb.GetKeyUsageResponse(key_id=record.id)
        for b in buckets:
            out.buckets.add(day=b.day, model=b.model, requests=b.requests, prompt_tokens=b.prompt_tokens,
                            completion_tokens=b.completion_tokens)
            out.requests += b.requests
            out.prompt_tokens += b.prompt_tokens
            out.completion_tokens += b.completion_tokens
        return out


async def _or_unavailable(awaitable, context):
    try:
        return await awaitable
    except StoreUnavailable as exc:
        log.warning("admin call failed: database unavailable (%s)", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "The key database is unavailable; retry shortly.")
