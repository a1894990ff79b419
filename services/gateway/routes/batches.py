"""OpenAI's Batch API: ``/v1/batches`` (create, list, retrieve, cancel).

Thin, like the files and fine-tuning routes: admit with the ``chat`` scope (a batch's lines are chat,
completions, embeddings or responses requests, run as the key that made the batch), one call to the
trainer's ``Batches`` service, and the reply shaped as OpenAI's ``batch`` object. The lines come back to this
gateway from the trainer's batch runner, at batch priority (see ``services.trainer.batches.runner``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from services.common.pb import batches_pb2 as pb
from services.common.pb import batches_pb2_grpc

from ..deps import ChatCaller, SettingsDep, UpstreamsDep
from ..errors import APIError
from ..schemas import _Body
from .fine_tuning import call, page, trainer_channel

router = APIRouter(prefix="/v1", tags=["batches"])


class BatchCreate(_Body):
    input_file_id: Annotated[str, Field(min_length=1, max_length=128)]
    endpoint: Annotated[str, Field(min_length=1, max_length=128)]
    completion_window: Annotated[str, Field(min_length=1, max_length=16)]
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


def _stub(upstreams, settings) -> batches_pb2_grpc.BatchesStub:
    return batches_pb2_grpc.BatchesStub(trainer_channel(upstreams, settings))


def _at(value: int) -> int | None:
    return value or None


def batch_obj(b: pb.Batch) -> dict:
    c = b.request_counts
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model or None,
        "errors": {"object": "list", "data": [{"code": e.code, "message": e.message, "param": e.param or None,
                                               "line": e.line or None} for e in b.errors]} if b.errors else None,
        "input_file_id": b.input_file_id, "completion_window": b.completion_window, "status": b.status,
        "output_file_id": b.output_file_id or None, "error_file_id": b.error_file_id or None,
        "created_at": b.created_at, "in_progress_at": _at(b.in_progress_at), "expires_at": _at(b.expires_at),
        "finalizing_at": _at(b.finalizing_at), "completed_at": _at(b.completed_at), "failed_at": _at(b.failed_at),
        "expired_at": _at(b.expired_at), "cancelling_at": _at(b.cancelling_at), "cancelled_at": _at(b.cancelled_at),
        "request_counts": {"total": c.total, "completed": c.completed, "failed": c.failed},
        "metadata": dict(b.metadata) or None,
        "usage": {"input_tokens": b.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": b.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": b.input_tokens + b.output_tokens},
    }


@router.post("/batches")
async def create_batch(body: BatchCreate, caller: ChatCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    if body.output_expires_after is not None:
        raise APIError(400, "output_expires_after is not supported: a batch's output and error files are kept "
                            "until they are deleted (DELETE /v1/files/{file_id}).", param="output_expires_after")
    req = pb.CreateBatchRequest(input_file_id=body.input_file_id, endpoint=body.endpoint,
                                completion_window=body.completion_window, metadata=body.metadata or {})
    return batch_obj(await call(caller, _stub(upstreams, settings).CreateBatch, req, timeout=120.0))


@router.get("/batches")
async def list_batches(caller: ChatCaller, settings: SettingsDep, upstreams: UpstreamsDep, after: str = "",
                       limit: Annotated[int, Query(ge=1, le=100)] = 20):
    resp = await call(caller, _stub(upstreams, settings).ListBatches, pb.ListBatchesRequest(after=after, limit=limit))
    return page([batch_obj(b) for b in resp.batches], resp.has_more)


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, caller: ChatCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    return batch_obj(await call(caller, _stub(upstreams, settings).GetBatch, pb.BatchRef(batch_id=batch_id)))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, caller: ChatCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    return batch_obj(await call(caller, _stub(upstreams, settings).CancelBatch, pb.BatchRef(batch_id=batch_id)))
