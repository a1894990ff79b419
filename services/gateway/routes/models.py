"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request

from services.common.grpcutil import request_metadata
from services.common.pb import inference_pb2 as pb

from ..admission import admit
from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError, from_grpc

router = APIRouter(prefix="/v1", tags=["models"])


def _model_obj(m: pb.ModelInfo) -> dict:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by or "llmsvc",
            "root": m.root, "parent": m.parent or None, "max_model_len": m.max_model_len}


async def _list(request: Request, settings, upstreams) -> list[pb.ModelInfo]:
    """The models this key may use: shared ones and its owner's fine-tunes, within its allow-list."""
    admission = await admit(upstreams, request, model="", scope="chat", reserve_tokens=0,
                            timeout_s=settings.auth_timeout_s)
    try:
        resp = await upstreams.router.ListModels(pb.ListModelsRequest(), timeout=5.0, metadata=request_metadata())
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc) from None
    upstreams.model_owners = {**upstreams.model_owners, **{m.id: m.owned_by for m in resp.models}}
    return [m for m in resp.models if admission.may_use(m.id, m.owned_by)]


@router.get("/models")
async def list_models(request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    return {"object": "list", "data": [_model_obj(m) for m in await _list(request, settings, upstreams)]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    for m in await _list(request, settings, upstreams):
        if m.id == model_id:
            return _model_obj(m)
    raise APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.",
                   code="model_not_found", param="model")
