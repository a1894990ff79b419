"""``/v1/admin/keys``: create, list, show, revoke API keys and read their usage.

Each route forwards the caller's bearer key to ``llmsvc.v1.AuthAdmin`` as
``authorization`` metadata; auth checks it (the ``admin`` scope) through the
same path as every other key, so the gateway stays stateless and trusts nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.grpcutil import request_metadata
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from ..admission import bearer_key
from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError, from_grpc

router = APIRouter(prefix="/v1/admin", tags=["admin"])

_ERRORS = {
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "insufficient_scope"),
    grpc.StatusCode.NOT_FOUND: (404, "key_not_found"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, None),
}


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    owner: str = Field("", max_length=200)
    """Owner or team; keys can be listed by it."""
    scopes: list[Literal["chat", "train", "eval", "admin", "batch"]] = Field(default_factory=lambda: ["chat"],
                                                                             min_length=1)
    """``batch``: the key's generations always queue as batch work."""
    allowed_models: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list,
                                                                                       max_length=100)
    """Empty: every model."""
    rpm: int | None = Field(None, ge=1, le=10_000_000)
    tpm: int | None = Field(None, ge=1, le=10**12)
    daily_token_quota: int | None = Field(None, ge=1, le=10**15)
    max_concurrent: int | None = Field(None, ge=1, le=1_000_000)
    expires_at: datetime | None = None


def key_public(k: pb.KeyInfo) -> dict:
    return {
        "id": k.id, "object": "api_key", "prefix": k.prefix, "name": k.name, "owner": k.owner,
        "scopes": list(k.scopes), "allowed_models": list(k.allowed_models), "rpm": k.rpm, "tpm": k.tpm,
        "daily_token_quota": k.daily_token_quota or None, "max_concurrent": k.max_concurrent or None,
        "expires_at": k.expires_at or None, "revoked_at": k.revoked_at or None, "created_at": k.created_at,
        "last_used_at": k.last_used_at or None,
    }


async def _call(request: Request, upstreams, settings, method: str, message):
    """One AuthAdmin call with the caller's key; gRPC statuses become OpenAI-shaped errors."""
    metadata = (("authorization", f"Bearer {bearer_key(request)}"), *request_metadata(request.state.request_id))
    stub = auth_pb2_grpc.AuthAdminStub(upstreams.auth_channel)
    try:
        return await getattr(stub, method)(message, timeout=settings.auth_timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in _ERRORS:
            status, code = _ERRORS[exc.code()]
            raise APIError(status, exc.details() or "Request refused.", code=code) from None
        raise from_grpc(exc) from None


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    msg = pb.CreateKeyRequest(name=body.name, owner=body.owner, scopes=body.scopes,
                              allowed_models=body.allowed_models, rpm=body.rpm or 0, tpm=body.tpm or 0,
                              daily_token_quota=body.daily_token_quota or 0, max_concurrent=body.max_concurrent or 0,
                              expires_at=body.expires_at.isoformat() if body.expires_at else "")
    resp: pb.CreateKeyResponse = await _call(request, upstreams, settings, "CreateKey", msg)
    # The secret appears in this response only; it is not stored anywhere.
    return JSONResponse({**key_public(resp.key), "key": resp.secret}, status_code=201,
                        headers={"cache-control": "no-store"})


@router.get("/keys")
async def list_keys(request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                    owner: Annotated[str, Query(max_length=200)] = "", include_revoked: bool = False):
    resp: pb.ListKeysResponse = await _call(request, upstreams, settings, "ListKeys",
                                            pb.ListKeysRequest(owner=owner, include_revoked=include_revoked))
    return {"object": "list", "data": [key_public(k) for k in resp.keys]}


@router.get("/keys/{key_id}")
async def get_key(key_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    return key_public(await _call(request, upstreams, settings, "GetKey", pb.KeyRef(key_id=key_id[:64])))


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    """Revoke (the row stays, for the usage ledger); every auth replica refuses the key within its cache TTL."""
    return key_public(await _call(request, upstreams, settings, "RevokeKey", pb.KeyRef(key_id=key_id[:64])))


@router.get("/keys/{key_id}/usage")
async def key_usage(key_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                    days: Annotated[int, Query(ge=1, le=366)] = 30):
    """Usage per UTC day and model over the last ``days`` days (today included), with totals."""
    resp: pb.GetKeyUsageResponse = await _call(request, upstreams, settings, "GetKeyUsage",
                                               pb.GetKeyUsageRequest(key_id=key_id[:64], days=days))
    return {
        "object": "usage", "key_id": resp.key_id, "days": days,
        "data": [{"day": b.day, "model": b.model, "requests": b.requests, "prompt_tokens": b.prompt_tokens,
                  "completion_tokens": b.completion_tokens, "total_tokens": b.prompt_tokens + b.completion_tokens}
                 for b in resp.buckets],
        "total": {"requests": resp.requests, "prompt_tokens": resp.prompt_tokens,
                  "completion_tokens": resp.completion_tokens,
                  "total_tokens": resp.prompt_tokens + resp.completion_tokens},
    }
