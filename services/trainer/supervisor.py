"""The job lifecycle: validating_files → queued → running → succeeded | failed | cancelled.

One supervisor per service is the only writer of a job's status; the servicer
only records a cancel request and wakes it. Each tick it validates new jobs'
files, follows running jobs (ingests their events, reads their runner state),
finishes those that ended, and starts queued jobs while there is capacity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db.base import utcnow
from services.common.db.job_tables import Job

from . import events, metrics, repo
from .datafile import InvalidFile, check_recipe_format, validate_path
from .evals import FINAL, summary
from .finish import Finisher
from .notifier import Notifier
from .runners import Launch, Runner
from .spec import JobPaths, build_spec, complete_steps, spec_json
from .store import ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    max_concurrent_jobs: int = 1
    poll_interval_s: float = 0.5
    grace_s: float = 60.0
    lease_ttl_s: float = 15.0
    """An instance that stops renewing the lease (it crashed) is replaced after this long."""
    max_job_s: float = 72 * 3600.0
    """A job running longer is stopped and fails with ``deadline_exceeded``."""


class Supervisor:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], store: ModelStore, runner: Runner,
                 notifier: Notifier, cfg: SupervisorConfig, warm=None, evals=None) -> None:
        self.sessions, self.store, self.runner, self.notifier, self.cfg = sessions, store, runner, notifier, cfg
        self.finisher = Finisher(store, runner, notifier, warm, evals)
        self._wake = asyncio.Event()
        self._last_loss: dict[str, dict] = {}
        self._stopping: set[str] = set()
        self._task: asyncio.Task | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.leader = False
        self._renewed_at = 0.0

    def paths(self, job: Job) -> JobPaths:
        return JobPaths(self.store.job_dir(job.id))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="job-supervisor")

    async def close(self, suspend: bool) -> None:
        """Stop supervising; with ``suspend``, stop local jobs (they checkpoint) and queue them to resume later."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if suspend and self.leader:
            await self.suspend_running()
        if self.leader:
            async with self.sessions() as session:
                await repo.release_lease(session, self.holder)
            self.leader = False

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor tick failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _hold_lease(self, session: AsyncSession) -> bool:
        """Whether this instance supervises; the lease is renewed when a third of it has passed."""
        now = time.monotonic()
        if self.leader and now - self._renewed_at < self.cfg.lease_ttl_s / 3:
            return True
        leader = await repo.acquire_lease(session, self.holder, self.cfg.lease_ttl_s)
        if leader != self.leader:
            log.info("%s the supervisor lease", "took" if leader else "lost")
            self.leader = leader
        self._renewed_at = now if leader else 0.0
        return leader

    async def tick(self) -> None:
        async with self.sessions() as session:
            if not await self._hold_lease(session):
                return
            for job in await repo.jobs_in(session, "validating_files"):
                await self._guarded(session, job, self._validate)
            for job in await repo.jobs_in(session, "running"):
                await self._guarded(session, job, self._follow)
            free = self.cfg.max_concurrent_jobs - len(await repo.jobs_in(session, "running"))
            for job in (await repo.jobs_in(session, "queued"))[: max(0, free)]:
                await self._guarded(session, job, self._launch)
            metrics.set_job_counts(await repo.count_by_status(session))
            if self.finisher.evals is not None:
                for job in await repo.jobs_in(session, "succeeded"):
                    if any(r.get("status") not in FINAL for r in (job.extra or {}).get("eval_runs") or ()):
                        await self._guarded(session, job, self._follow_evals)

    async def _follow_evals(self, session: AsyncSession, job: Job) -> None:
        """Read the job's eval runs that are not final; record those that ended (event and metrics)."""
        runs = [dict(r) for r in job.extra["eval_runs"]]
        scores = dict((job.extra or {}).get("eval_metrics") or {})
        changed = False
        for r in runs:
            if r.get("status") in FINAL:
                continue
            try:
                status, found, error = await self.finisher.evals.status(job.owner, job.id, r["run_id"])
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                status, found, error = "failed", {}, "the eval run is gone"
            if status not in FINAL:
                continue
            r["status"], changed = status, True
            if status == "succeeded":
                scores[r["suite"]] = {k: v["value"] for k, v in found.items()}
                await repo.add_event(session, job.id, f"Eval {r['suite']} succeeded on {job.fine_tuned_model}: "
                                     f"{summary(found)}", data={"run_id": r["run_id"], "metrics": found})
            else:
                r["error"] = error
                await repo.add_event(session, job.id, f"Eval {r['suite']} {status}: {error}", level="warning",
                                     data={"run_id": r["run_id"]})
        if changed:
            job.extra = {**job.extra, "eval_runs": runs, "eval_metrics": scores}
            await session.commit()
            self.notifier.notify(job.id)

    async def _guarded(self, session: AsyncSession, job: Job, step) -> None:
        """One job's trouble (a database hiccup, an unreadable file) must not stall the others."""
        if not await self._hold_lease(session):  # a long tick renews it as it goes
            return
        try:
            await step(session, job)
        except Exception:
            log.exception("job %s: %s failed; retrying on the next tick", job.id, step.__name__)
            await session.rollback()

    async def _cancel_early(self, session: AsyncSession, job: Job) -> bool:
        if job.cancel_requested:
            await repo.set_status(session, job, "cancelled", "Fine-tuning job cancelled")
            self.notifier.notify(job.id)
        return job.cancel_requested

    async def _validate(self, session: AsyncSession, job: Job) -> None:
        if await self._cancel_early(session, job):
            return
        checks = [(job.extra["train_path"], "training_file")]
        if job.extra.get("validation_path"):
            checks.append((job.extra["validation_path"], "validation_file"))
        examples = 0
        for path, param in checks:
            try:
                summary = await asyncio.to_thread(validate_path, path)
                check_recipe_format(job.recipe, summary.format)
            except InvalidFile as exc:
                error = {"code": f"invalid_{param}", "message": f"The {param.replace('_', ' ')} is invalid: {exc}.",
                         "param": param}
                await repo.set_status(session, job, "failed", error["message"], level="error", error=error)
                self.notifier.notify(job.id)
                return
            examples = examples or summary.examples
        job.hyperparameters = complete_steps(job.hyperparameters, examples)
        await repo.set_status(session, job, "queued", "Files validated, moving job to queued state")
        self.notifier.notify(job.id)

    def _write_spec(self, job: Job, paths: JobPaths) -> None:
        spec = build_spec(recipe=job.recipe, model={k: v for k, v in job.base.items() if k != "parent"},
                          train=job.extra["train_path"], validation=job.extra.get("validation_path"),
                          hparams=job.hyperparameters, extra=job.extra, paths=paths, name=job.output_name)
        paths.root.mkdir(parents=True, exist_ok=True)
        tmp = paths.spec.with_suffix(".tmp")
        tmp.write_text(spec_json(spec))
        os.replace(tmp, paths.spec)

    async def _launch(self, session: AsyncSession, job: Job) -> None:
        if await self._cancel_early(session, job):
            return
        paths = self.paths(job)
        res = job.extra.get("resources") or {}
        launch = Launch(job.id, paths.spec, paths.events, paths.log, nodes=res.get("nodes", 1),
                        nproc_per_node=res.get("nproc_per_node"))
        try:
            self._write_spec(job, paths)
            job.handle = await self.runner.start(launch)
        except Exception as exc:  # the runner could not start it: the job fails, the service goes on
            log.exception("job %s could not start", job.id)
            error = {"code": "runner_error", "message": f"The job could not be started: {exc}", "param": None}
            await repo.set_status(session, job, "failed", error["message"], level="error", error=error)
            return
        await repo.set_status(session, job, "running", "Fine-tuning job started")
        self.notifier.notify(job.id)

    async def _ingest(self, session: AsyncSession, job: Job) -> None:
        got = await events.ingest(session, job, self.paths(job).events, self._last_loss.setdefault(job.id, {}))
        if got.count:
            self.notifier.notify(job.id)

    async def _follow(self, session: AsyncSession, job: Job, *, suspending: bool = False) -> None:
        await self._ingest(session, job)
        if (not job.cancel_requested and job.started_at is not None and not suspending
                and (utcnow() - job.started_at).total_seconds() > self.cfg.max_job_s):
            job.cancel_requested = True
            job.extra = {**job.extra, "deadline_exceeded": True}
            await repo.add_event(session, job.id, f"The job ran past its deadline ({self.cfg.max_job_s / 3600:g} h): "
                                 "stopping it", level="error")
            await session.commit()
        if job.cancel_requested and job.id not in self._stopping:
            self._stopping.add(job.id)
            await repo.add_event(session, job.id, "Cancelling: the job stops after saving a checkpoint")
            await session.commit()
            await self.runner.stop(job.id, job.handle)
        state = await self.runner.state(job.id, job.handle)
        if state.phase == "running":
            return
        await self._ingest(session, job)  # what it wrote before exiting
        await self.finisher.finish(session, job, state, self.paths(job), suspended=suspending)
        self._stopping.discard(job.id)
        self._last_loss.pop(job.id, None)

    async def suspend_running(self) -> None:
        """On a graceful stop of this service: SIGTERM local jobs, wait, queue them to resume later."""
        if not self.runner.suspend_on_shutdown:
            return
        async with self.sessions() as session:
            running = await repo.jobs_in(session, "running")
            for job in running:
                await self.runner.stop(job.id, job.handle)
            await self.runner.wait_all(self.cfg.grace_s)
            for job in running:
                await self._follow(session, job, suspending=True)
