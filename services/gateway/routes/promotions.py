"""``POST /v1/models/{alias}/promote`` and ``POST /v1/models/{alias}/rollback``.

A gated promotion needs the ``eval`` scope; ``force`` (past a failed gate)
and rollback need ``admin``, and the eval service records the actor's key id
in the audit trail. A refused promotion is a 409 whose body carries the
gate's checks next to the error.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from services.common.pb import eval_pb2 as pb

from ..admission import Admission, admit
from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError
from ..schemas import _Body
from .evals import call, eval_stub

router = APIRouter(prefix="/v1", tags=["lifecycle"])

# Gating runs evals and may start a worker: minutes on CPU.
PROMOTE_TIMEOUT_S = 1800.0


class PromoteBody(_Body):
    version: Annotated[str, Field(min_length=1, max_length=200)]
    force: bool = False


def outcome_json(resp: pb.PromoteResponse) -> dict:
    return {
        "object": "model.promotion", "alias": resp.alias, "version": resp.version, "promoted": resp.promoted,
        "previous_version": resp.previous_version or None, "forced": resp.forced, "message": resp.message,
        "checks": [{"suite": c.suite, "metric": c.metric, "candidate": c.candidate,
                    "current": c.current if c.HasField("current") else None, "threshold": c.threshold,
                    "tolerance": c.tolerance, "passed": c.passed, "reason": c.reason,
                    "candidate_run_id": c.candidate_run_id or None, "current_run_id": c.current_run_id or None}
                   for c in resp.checks],
    }


async def _admit_scope(request: Request, settings, upstreams, alias: str, scope: str) -> Admission:
    admission = await admit(upstreams, request, model=alias, scope=scope, reserve_tokens=0,
                            timeout_s=settings.auth_timeout_s)
    if admission.scopes and scope not in admission.scopes:
        raise APIError(403, f"This key lacks the '{scope}' scope.", code="permission_denied")
    return admission


@router.post("/models/{alias}/promote")
async def promote(alias: str, body: PromoteBody, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    admission = await _admit_scope(request, settings, upstreams, alias, "admin" if body.force else "eval")
    req = pb.PromoteRequest(alias=alias, version=body.version, force=body.force, actor=admission.key_id)
    resp = await call(admission, eval_stub(upstreams, settings).Promote, req, timeout=PROMOTE_TIMEOUT_S)
    doc = outcome_json(resp)
    if not resp.promoted:
        err = APIError(409, resp.message, code="promotion_gate_failed").body()
        return JSONResponse({**err, "promotion": doc}, status_code=409)
    return doc


@router.post("/models/{alias}/rollback")
async def rollback(alias: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    admission = await _admit_scope(request, settings, upstreams, alias, "admin")
    resp = await call(admission, eval_stub(upstreams, settings).Rollback,
                      pb.RollbackRequest(alias=alias, actor=admission.key_id),
                      timeout=PROMOTE_TIMEOUT_S)
    return outcome_json(resp)
