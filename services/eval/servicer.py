"""gRPC ``llmsvc.v1.Eval`` on top of :class:`RunManager` and :class:`Promoter`."""

from __future__ import annotations

import json
import logging

import grpc

from services.common.db.eval_tables import EvalRun
from services.common.identity import Identity, IdentityCodec
from services.common.pb import eval_pb2 as pb
from services.common.pb import eval_pb2_grpc
from services.lifecycle.promotion import Outcome, Promoter, PromotionError

from .client import UpstreamError
from .runner import RunManager, UnknownModel
from .suites import SUITES, SuiteError

log = logging.getLogger(__name__)

STATUS = {"queued": pb.EVAL_STATUS_QUEUED, "running": pb.EVAL_STATUS_RUNNING, "succeeded": pb.EVAL_STATUS_SUCCEEDED,
          "failed": pb.EVAL_STATUS_FAILED, "cancelled": pb.EVAL_STATUS_CANCELLED}


def run_message(row: EvalRun, samples: list[dict] | None = None) -> pb.EvalRun:
    msg = pb.EvalRun(
        id=row.id, model=row.model, model_version=row.model_version, suite=row.suite, status=STATUS[row.status],
        sample_count=row.sample_count, samples_done=row.samples_done, duration_s=row.duration_s, error=row.error,
        params_json=json.dumps(row.params), created_by=row.created_by,
        created_at=int(row.created_at.timestamp()) if row.created_at else 0,
        finished_at=int(row.finished_at.timestamp()) if row.finished_at else 0,
    )
    for name, m in (row.metrics or {}).items():
        msg.metrics[name].CopyFrom(pb.Metric(value=m["value"], stderr=m["stderr"], ci_low=m["ci_low"],
                                             ci_high=m["ci_high"], higher_is_better=m["higher_is_better"]))
    if samples is not None:
        msg.samples_json.extend(json.dumps(s) for s in samples)
    return msg


def outcome_message(o: Outcome) -> pb.PromoteResponse:
    resp = pb.PromoteResponse(promoted=o.promoted, alias=o.alias, version=o.version,
                              previous_version=o.previous_version, message=o.message, forced=o.forced)
    for c in o.checks:
        check = resp.checks.add(suite=c.suite, metric=c.metric, candidate=c.candidate or 0.0,
                                threshold=c.threshold or 0.0, tolerance=c.tolerance, passed=c.passed, reason=c.reason,
                                candidate_run_id=c.candidate_run_id, current_run_id=c.current_run_id)
        if c.current is not None:
            check.current = c.current
    return resp


class EvalServicer(eval_pb2_grpc.EvalServicer):
    def __init__(self, runs: RunManager, promoter: Promoter) -> None:
        self.runs = runs
        self.promoter = promoter
        self.identity = IdentityCodec()
        self.identity.warn_if_open("the eval service")

    async def _owners(self, *names: str) -> list[str | None]:
        """The registry owner of each name (a version id or alias; None: not in the registry)."""
        from services.common.db import registry

        out = []
        async with self.runs.sessions() as session:
            for name in names:
                row = await registry.resolve(session, name)  # as RunManager.resolve reads it
                out.append(None if row is None else row.owner or "")
        return out

    def _actor(self, who: Identity, claimed: str) -> str:
        """Who acts: the signed identity's key; the name a message gives counts only without an internal
        secret (every caller is the operator)."""
        return (who.key_id or who.owner) if self.identity.enabled else claimed

    async def CreateRun(self, request: pb.CreateRunRequest, context: grpc.aio.ServicerContext) -> pb.EvalRun:
        who = await self.identity.caller(context)
        if not who.admin:
            (owner,) = await self._owners(request.model)
            if owner and owner != who.owner:  # another owner's model: as absent as one that never was
                # (shared models, owner "", are everyone's)
                await context.abort(grpc.StatusCode.NOT_FOUND, f"The model '{request.model}' is neither a "
                                    "registered version or alias nor served by any worker.")
        most = self.runs.settings.max_active_runs_per_owner
        if not who.admin and (active := await self.runs.store.active_count(who.owner)) >= most:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"Your organization has {active} eval runs queued or running; at most {most} at "
                                "once. Wait for one to finish or cancel one.",
                                trailing_metadata=(("error-code", "too_many_active_runs"),))
        try:
            params = json.loads(request.params_json) if request.params_json else {}
            if not isinstance(params, dict):
                raise SuiteError("params must be a JSON object")
            row = await self.runs.create(request.model, request.suite, params,
                                         self._actor(who, request.created_by), owner=who.owner)
        except (SuiteError, json.JSONDecodeError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except UpstreamError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the router is unavailable: {exc}")
        return run_message(row)

    async def _get_or_404(self, run_id: str, context) -> EvalRun:
        """The run, if the caller's owner may see it; another owner's is as absent as one that never was."""
        who = await self.identity.caller(context)
        row = await self.runs.store.get(run_id)
        if row is None or not who.may_see(row.owner):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No eval run with id '{run_id}'.")
        return row

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.EvalRun:
        row = await self._get_or_404(request.id, context)
        samples = await self.runs.store.samples(row.id) if request.include_samples else None
        return run_message(row, samples)

    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext):
        who = await self.identity.caller(context)
        names = [request.model] if request.model else None
        if request.model:
            try:  # runs of an alias are the runs of the version it points at, too
                names.append((await self.runs.resolve(request.model)).version)
            except (UnknownModel, UpstreamError):
                pass
        rows = await self.runs.store.list(versions=names, suite=request.suite, limit=request.limit or 100,
                                          owner=who.owner_filter())
        return pb.ListRunsResponse(runs=[run_message(r) for r in rows])

    async def CancelRun(self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext) -> pb.EvalRun:
        row = await self._get_or_404(request.id, context)
        if row.status in ("succeeded", "failed", "cancelled"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"The eval run '{row.id}' already {row.status}.")
        return run_message(await self.runs.cancel(row.id))

    async def ListSuites(self, request: pb.ListSuitesRequest, context: grpc.aio.ServicerContext):
        return pb.ListSuitesResponse(suites=sorted(SUITES))

    async def Promote(self, request: pb.PromoteRequest, context: grpc.aio.ServicerContext) -> pb.PromoteResponse:
        who = await self.identity.caller(context)
        if request.force and not who.admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Only an admin key may force a promotion.")
        if not who.admin:
            from services.common.db import registry

            (version_owner,) = await self._owners(request.version)
            async with self.runs.sessions() as session:
                alias = await session.get(registry.ModelAlias, request.alias)
            if version_owner is not None and not registry.visible(version_owner, who.owner):
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"The model version '{request.version}' is not registered.")
            if (alias.owner if alias is not None else version_owner) != who.owner:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"Only the owner of the alias '{request.alias}' (or an admin key) may move it.")
        try:
            outcome = await self.promoter.promote(request.alias, request.version,
                                                  actor=self._actor(who, request.actor) or "unknown",
                                                  force=request.force)
        except PromotionError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Exception as exc:  # rollout failures: the caller must see why
            log.exception("promotion of %s to %s failed", request.version, request.alias)
            await context.abort(grpc.StatusCode.INTERNAL, f"promotion failed: {exc}")
        return outcome_message(outcome)

    async def Rollback(self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext) -> pb.PromoteResponse:
        who = await self.identity.caller(context)
        if not who.admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Only an admin key may roll an alias back.")
        try:
            outcome = await self.promoter.rollback(request.alias, actor=self._actor(who, request.actor) or "unknown")
        except PromotionError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:
            log.exception("rollback of %s failed", request.alias)
            await context.abort(grpc.StatusCode.INTERNAL, f"rollback failed: {exc}")
        return outcome_message(outcome)
