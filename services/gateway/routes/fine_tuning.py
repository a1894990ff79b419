"""OpenAI's fine-tuning API: ``/v1/fine_tuning/jobs`` and its events and checkpoints.

Thin: admit with the ``train`` scope, one call to the trainer service, and
the reply shaped as OpenAI's ``fine_tuning.job``, ``fine_tuning.job.event``,
``fine_tuning.job.checkpoint`` and ``list`` objects, so the official client
works unchanged. Our extensions ride in the body (``extra_body`` in the
client): ``recipe``, ``lora``, ``merge_lora``, ``checkpoint_every``,
``keep_checkpoints`` and ``resources``; ``GET …/events?stream=true`` follows a
job's events as server-sent events until it ends.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from google.protobuf import json_format
from pydantic import Field

from services.common.grpcutil import insecure_channel
from services.common.pb import trainer_pb2 as pb
from services.common.pb import trainer_pb2_grpc

from ..admission import Admission
from ..deps import SettingsDep, TrainCaller, UpstreamsDep
from ..errors import APIError
from ..schemas import _Body

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])
EXTENSIONS = ("recipe", "lora", "merge_lora", "checkpoint_every", "keep_checkpoints", "resources", "evals")


class JobCreate(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1, max_length=1024)]
    validation_file: str | None = None
    hyperparameters: dict[str, Any] = {}
    method: dict[str, Any] | None = None
    suffix: Annotated[str, Field(max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    recipe: str | None = None
    lora: bool | dict[str, Any] | None = None
    merge_lora: bool | None = None
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None
    keep_checkpoints: Annotated[int, Field(ge=1)] | None = None
    resources: dict[str, int] | None = None
    evals: Annotated[list[str | dict[str, Any]], Field(min_length=1, max_length=8)] | None = None
    """Eval suites to run on the new version when the job succeeds (names or ``{"suite", "params"}``)."""


def trainer_channel(upstreams, settings):
    channel = upstreams.extra.get("trainer")
    if channel is None:  # the app's lifespan opens it; this covers an app built without it
        channel = upstreams.extra["trainer"] = insecure_channel(settings.trainer_addr)
    return channel


def trainer_stub(upstreams, settings) -> trainer_pb2_grpc.TrainerStub:
    return trainer_pb2_grpc.TrainerStub(trainer_channel(upstreams, settings))


def trainer_error(exc: grpc.aio.AioRpcError) -> APIError:
    code, details = exc.code(), exc.details() or exc.code().name
    trailers = dict(exc.trailing_metadata() or ())
    param, err_code = trailers.get("param"), trailers.get("error-code")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return APIError(400, details, param=param, code=err_code)
    if code == grpc.StatusCode.NOT_FOUND:
        return APIError(404, details, param=param, code=err_code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return APIError(429, details, param=param, code=err_code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return APIError(503, f"The trainer service is unavailable: {details}", code="service_unavailable",
                        headers={"retry-after": "1"})
    return APIError(502, f"Trainer service error: {details}", code="upstream_error")


async def call(admission: Admission, method, req, timeout: float = 30.0):
    """One trainer call made for the admitted request (its signed identity in the metadata)."""
    try:
        return await method(req, timeout=timeout, metadata=admission.metadata)
    except grpc.aio.AioRpcError as exc:
        raise trainer_error(exc) from None


def _whole(value):
    """Struct numbers are doubles: give whole ones back as integers (``"batch_size": 4``, not 4.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _dict(message) -> dict:
    return _whole(json_format.MessageToDict(message))


def _method(job: pb.Job) -> dict:
    method = _dict(job.method) or {"type": "supervised"}
    kind = method.get("type", "supervised")
    if kind not in method:  # OpenAI nests the method's hyperparameters under its type
        h = _dict(job.hyperparameters)
        keys = ("n_epochs", "batch_size", "learning_rate_multiplier", *(("beta",) if kind == "dpo" else ()))
        method[kind] = {"hyperparameters": {k: h[k] for k in keys if k in h}}
    return method


def job_obj(job: pb.Job) -> dict:
    error = None
    if job.HasField("error") and job.error.code:
        error = {"code": job.error.code, "message": job.error.message, "param": job.error.param or None}
    return {
        "object": "fine_tuning.job", "id": job.id, "model": job.model, "created_at": job.created_at,
        "finished_at": job.finished_at or None, "fine_tuned_model": job.fine_tuned_model or None,
        "organization_id": f"org-{job.owner or 'llmsvc'}", "result_files": [], "status": job.status,
        "validation_file": job.validation_file or None, "training_file": job.training_file,
        "hyperparameters": _dict(job.hyperparameters), "trained_tokens": job.trained_tokens or None,
        "error": error, "user_provided_suffix": job.suffix or None, "seed": job.seed, "estimated_finish": None,
        "integrations": [], "method": _method(job), "metadata": dict(job.metadata) or None,
        **({"metrics": _dict(job.metrics)} if job.HasField("metrics") else {}),
    }


def event_obj(ev: pb.JobEvent) -> dict:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{ev.id}", "created_at": ev.created_at,
            "level": ev.level, "message": ev.message, "data": _dict(ev.data), "type": ev.type}


def checkpoint_obj(c: pb.Checkpoint) -> dict:
    return {"object": "fine_tuning.job.checkpoint", "id": c.id, "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.path, "fine_tuning_job_id": c.job_id,
            "metrics": {"step": float(c.step), **dict(c.metrics)}, "step_number": c.step}


def page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.post("/jobs")
async def create_job(body: JobCreate, caller: TrainCaller, request: Request, settings: SettingsDep,
                     upstreams: UpstreamsDep):
    extra = {k: getattr(body, k) for k in EXTENSIONS if getattr(body, k) is not None}
    req = pb.CreateJobRequest(model=body.model, training_file=body.training_file,
                              validation_file=body.validation_file or "", suffix=body.suffix or "",
                              seed=body.seed if body.seed is not None else -1, metadata=body.metadata or {},
                              )
    req.hyperparameters.update(body.hyperparameters)
    req.method.update(body.method or {})
    req.extra.update(extra)
    return job_obj(await call(caller, trainer_stub(upstreams, settings).CreateJob, req))


@router.get("/jobs")
async def list_jobs(caller: TrainCaller, request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                    after: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 20):
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    resp = await call(caller, trainer_stub(upstreams, settings).ListJobs,
                      pb.ListJobsRequest(after=after, limit=limit, metadata=metadata))
    return {"object": "list", "data": [job_obj(j) for j in resp.jobs], "has_more": resp.has_more}


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    return job_obj(await call(caller, trainer_stub(upstreams, settings).GetJob, pb.JobRequest(job_id=job_id)))


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    return job_obj(await call(caller, trainer_stub(upstreams, settings).CancelJob, pb.JobRequest(job_id=job_id)))


def _event_cursor(after: str) -> int:
    raw = after.removeprefix("ftevent-")
    if after and not raw.isdigit():
        raise APIError(400, f"Invalid 'after': {after!r} is not an event id.", param="after")
    return int(raw or 0)


@router.get("/jobs/{job_id}/events")
async def list_events(job_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep,
                      after: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 20, stream: bool = False):
    stub = trainer_stub(upstreams, settings)
    if stream:
        return await _follow_events(caller, stub, job_id, _event_cursor(after))
    resp = await call(caller, stub.ListJobEvents, pb.ListJobEventsRequest(job_id=job_id, after=_event_cursor(after),
                                                                  limit=limit))
    return {"object": "list", "data": [event_obj(e) for e in resp.events], "has_more": resp.has_more}


async def _follow_events(caller: Admission, stub, job_id: str, after: int) -> StreamingResponse:
    """SSE, oldest first from ``after``, until the job ends: ``data: <event>`` lines, then ``data: [DONE]``."""
    await call(caller, stub.GetJob, pb.JobRequest(job_id=job_id))  # a 404 before any byte is sent
    call_ = stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id=job_id, after=after, follow=True),
                                 metadata=caller.metadata)

    async def body():
        try:
            async for ev in call_:
                yield f"data: {json.dumps(event_obj(ev))}\n\n"
            yield "data: [DONE]\n\n"
        except grpc.aio.AioRpcError as exc:
            yield f"data: {json.dumps(trainer_error(exc).body())}\n\n"
        finally:
            call_.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


@router.get("/jobs/{job_id}/checkpoints")
async def list_checkpoints(job_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep,
                           after: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 10):
    resp = await call(caller, trainer_stub(upstreams, settings).ListCheckpoints,
                      pb.ListCheckpointsRequest(job_id=job_id, after=after, limit=limit))
    return page([checkpoint_obj(c) for c in resp.checkpoints], resp.has_more)
