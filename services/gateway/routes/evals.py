"""``POST /v1/evals``, ``GET /v1/evals/{id}``, ``GET /v1/evals?model=``, ``POST /v1/evals/{id}/cancel``.

Thin: admit with the ``eval`` scope, then one call to the eval service, whose
run objects are returned as JSON (status, metrics with stderr and 95%
intervals, sample counts, and the per-sample records on request).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query, Request
from pydantic import Field

from services.common.grpcutil import insecure_channel
from services.common.pb import eval_pb2 as pb
from services.common.pb import eval_pb2_grpc

from ..admission import Admission, admit
from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError
from ..schemas import _Body

router = APIRouter(prefix="/v1", tags=["evals"])

STATUS = {pb.EVAL_STATUS_QUEUED: "queued", pb.EVAL_STATUS_RUNNING: "running", pb.EVAL_STATUS_SUCCEEDED: "succeeded",
          pb.EVAL_STATUS_FAILED: "failed", pb.EVAL_STATUS_CANCELLED: "cancelled"}


class EvalCreate(_Body):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    suite: Annotated[str, Field(min_length=1, max_length=64)]
    params: dict[str, Any] = {}


def eval_stub(upstreams, settings) -> eval_pb2_grpc.EvalStub:
    channel = upstreams.extra.get("eval")
    if channel is None:  # the app's lifespan opens it; this covers an app built without it
        channel = upstreams.extra["eval"] = insecure_channel(settings.eval_addr)
    return eval_pb2_grpc.EvalStub(channel)


def grpc_error(exc: grpc.aio.AioRpcError) -> APIError:
    code, details = exc.code(), exc.details() or exc.code().name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return APIError(400, details)
    if code == grpc.StatusCode.NOT_FOUND:
        return APIError(404, details, code="not_found")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return APIError(403, details, code="permission_denied")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return APIError(429, details, code=dict(exc.trailing_metadata() or ()).get("error-code") or None)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return APIError(409, details, code="conflict", type="invalid_request_error")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return APIError(503, f"The eval service is unavailable: {details}", code="service_unavailable",
                        headers={"retry-after": "1"})
    return APIError(502, f"Eval service error: {details}", code="upstream_error")


async def call(admission: Admission, method, req, timeout: float = 30.0):
    """One eval-service call made for the admitted request (its signed identity in the metadata)."""
    try:
        return await method(req, timeout=timeout, metadata=admission.metadata)
    except grpc.aio.AioRpcError as exc:
        raise grpc_error(exc) from None


def run_json(run: pb.EvalRun, with_samples: bool = False) -> dict:
    doc = {
        "id": run.id, "object": "eval.run", "model": run.model, "model_version": run.model_version,
        "suite": run.suite, "status": STATUS.get(run.status, "unknown"),
        "metrics": {k: {"value": m.value, "stderr": m.stderr, "ci_low": m.ci_low, "ci_high": m.ci_high,
                        "higher_is_better": m.higher_is_better} for k, m in sorted(run.metrics.items())},
        "sample_count": run.sample_count, "samples_done": run.samples_done, "duration_s": run.duration_s,
        "error": run.error or None, "params": json.loads(run.params_json or "{}"), "created_by": run.created_by,
        "created_at": run.created_at, "finished_at": run.finished_at or None,
    }
    if with_samples:
        doc["samples"] = [json.loads(s) for s in run.samples_json]
    return doc


async def _admit(request: Request, settings, upstreams, model: str = "") -> Admission:
    return await admit(upstreams, request, model=model, scope="eval", reserve_tokens=0,
                       timeout_s=settings.auth_timeout_s)


@router.post("/evals")
async def create_eval(body: EvalCreate, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    request.state.model = body.model
    admission = await _admit(request, settings, upstreams, body.model)
    req = pb.CreateRunRequest(model=body.model, suite=body.suite, params_json=json.dumps(body.params),
                              created_by=admission.key_id)
    return run_json(await call(admission, eval_stub(upstreams, settings).CreateRun, req))


@router.get("/evals")
async def list_evals(request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                     model: Annotated[str | None, Query(max_length=200)] = None,
                     suite: Annotated[str | None, Query(max_length=64)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    admission = await _admit(request, settings, upstreams, model or "")
    resp = await call(admission, eval_stub(upstreams, settings).ListRuns,
                      pb.ListRunsRequest(model=model or "", suite=suite or "", limit=limit))
    return {"object": "list", "data": [run_json(r) for r in resp.runs]}


@router.get("/evals/{run_id}")
async def get_eval(run_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                   include_samples: bool = False):
    admission = await _admit(request, settings, upstreams)
    run = await call(admission, eval_stub(upstreams, settings).GetRun,
                     pb.GetRunRequest(id=run_id, include_samples=include_samples))
    return run_json(run, include_samples)


@router.post("/evals/{run_id}/cancel")
async def cancel_eval(run_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    admission = await _admit(request, settings, upstreams)
    return run_json(await call(admission, eval_stub(upstreams, settings).CancelRun, pb.CancelRunRequest(id=run_id),
                               timeout=60.0))
