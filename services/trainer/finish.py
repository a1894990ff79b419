"""What happens when a job's processes have ended: publish, fail, cancel, or queue to resume.

Success needs both the runner's word (exit code 0, Job Complete) and a
complete model folder; the folder is moved into the store and registered by
:meth:`ModelStore.publish`. Anything less fails the job and registers nothing.
"""

from __future__ import annotations

import json
import logging

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db.job_tables import Job
from services.common.grpcutil import insecure_channel, request_metadata
from services.common.pb import router_pb2, router_pb2_grpc

from . import metrics, repo
from .notifier import Notifier
from .runners import Runner, RunState
from .spec import JobPaths
from .store import IncompleteModel, ModelStore, remove_tree

log = logging.getLogger(__name__)


def _read_meta(paths: JobPaths) -> dict:
    try:
        meta = json.loads((paths.output / "llmsvc.json").read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


class Finisher:
    def __init__(self, store: ModelStore, runner: Runner, notifier: Notifier, warm=None, evals=None) -> None:
        self.store, self.runner, self.notifier = store, runner, notifier
        self.evals = evals
        """:class:`services.trainer.evals.EvalLauncher`: runs the suites a job names once it succeeds."""
        self.warm = warm
        """Async callable taking a new version id: have the router start it (see :class:`RouterWarmer`)."""

    async def finish(self, session: AsyncSession, job: Job, state: RunState, paths: JobPaths, *,
                     suspended: bool = False) -> None:
        succeeded = state.phase == "succeeded" or (state.phase == "gone" and job.trainer_status == "succeeded")
        # Stopped by us (service shutdown) rather than by the user: the trainer checkpointed; run it again.
        stopped_by_us = suspended or (state.phase == "gone" and job.trainer_status == "cancelled")
        if job.cancel_requested and (job.extra or {}).get("deadline_exceeded"):
            remove_tree(paths.output)
            error = {"code": "deadline_exceeded", "param": None,
                     "message": "The job ran past the longest a job may run and was stopped."}
            await repo.set_status(session, job, "failed", error["message"], level="error", error=error)
        elif job.cancel_requested:
            remove_tree(paths.output)
            await repo.set_status(session, job, "cancelled", "Fine-tuning job cancelled")
        elif succeeded:
            await self._publish(session, job, paths)
        elif stopped_by_us:
            job.handle, job.trainer_status = "", ""
            await repo.set_status(session, job, "queued", "The trainer service stopped; the job is queued again and "
                                  "resumes from its last checkpoint")
        else:
            await self._fail(session, job, state)
        await self.runner.cleanup(job.id, job.handle)
        if job.status != "queued":
            metrics.forget(job.id)
        self.notifier.notify(job.id)

    async def _fail(self, session: AsyncSession, job: Job, state: RunState) -> None:
        if state.phase == "gone" and job.trainer_status not in ("failed", "succeeded"):
            code = "orphaned"
            message = (f"The job ended while the trainer service was not watching it ({state.message}) and the "
                       "trainer reported no outcome.")
        else:
            code = "training_failed"
            message = job.trainer_message or state.message or "The trainer failed."
        error = {"code": code, "message": message, "param": None}
        await repo.set_status(session, job, "failed", f"Fine-tuning job failed: {message}", level="error",
                              error=error)

    async def _publish(self, session: AsyncSession, job: Job, paths: JobPaths) -> None:
        meta = _read_meta(paths)
        final = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
        tokens = final.get("trained_tokens") or final.get("tokens")
        if isinstance(tokens, (int, float)):
            job.trained_tokens = int(tokens)
        try:
            row = await self.store.publish(
                session, job.output_name, paths.output, parent=job.base.get("parent"), recipe=job.recipe,
                config=meta.get("config") if isinstance(meta.get("config"), dict) else {"hyperparameters":
                                                                                        job.hyperparameters},
                data_hash=str(meta.get("data_hash") or ""), metrics=final, job_id=job.id, owner=job.owner,
            )
        except (IncompleteModel, OSError) as exc:
            log.warning("job %s: output not publishable: %s", job.id, exc)
            message = f"The trainer exited successfully but its output is not a complete model: {exc}"
            error = {"code": "incomplete_model", "message": message, "param": None}
            await repo.set_status(session, job, "failed", message, level="error", error=error)
            return
        job.fine_tuned_model, job.result_path = row.id, row.path
        await repo.add_event(session, job.id, f"New fine-tuned model created: {row.id}", data={"path": row.path})
        if self.warm is not None and (note := await self.warm(row.id)):
            await repo.add_event(session, job.id, note)
        if (job.extra or {}).get("evals") and self.evals is not None:
            runs, notes = await self.evals.start(job.id, job.owner, row.id, job.extra["evals"])
            job.extra = {**job.extra, "eval_runs": runs}
            for note in notes:
                await repo.add_event(session, job.id, note, level="warning" if "could not" in note else "info")
        await repo.set_status(session, job, "succeeded", "The job has successfully completed")


class RouterWarmer:
    """Asks the router to serve a new version now (``EnsureServed`` without waiting): a full model's worker
    starts while the job is marked succeeded, instead of on the first request. Never fails the job."""

    def __init__(self, router_addr: str) -> None:
        self.channel = insecure_channel(router_addr)
        self.stub = router_pb2_grpc.RouterStub(self.channel)

    async def __call__(self, version: str) -> str:
        try:
            resp = await self.stub.EnsureServed(router_pb2.EnsureServedRequest(model=version, wait_s=0),
                                                timeout=10.0, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            log.warning("could not have the router start %s: %s %s", version, exc.code().name, exc.details())
            return ""
        if resp.ready:
            return f"{version} is served (on the workers of {resp.served_as})" if resp.served_as != version else ""
        return f"Starting a worker for {version}; it answers once loaded"

    async def close(self) -> None:
        await self.channel.close()
