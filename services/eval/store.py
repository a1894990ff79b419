"""Eval runs in the database: every status change is one short transaction.

``finish_succeeded`` writes the metrics, the samples and the final status
together; ``finish_unsuccessfully`` records the status and error only, so a
failed or cancelled run can never be read as a result.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db.base import utcnow
from services.common.db.eval_tables import FINAL_STATUSES, EvalRun, EvalSample


class RunStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(self, *, model: str, model_version: str, suite: str, params: dict, params_hash: str,
                     created_by: str, owner: str = "") -> EvalRun:
        row = EvalRun(id=f"eval-{uuid.uuid4().hex[:16]}", model=model, model_version=model_version, suite=suite,
                      params=params, params_hash=params_hash, status="queued", metrics={}, created_by=created_by,
                      owner=owner)
        async with self.sessions() as s:
            s.add(row)
            await s.commit()
        return row

    async def get(self, run_id: str) -> EvalRun | None:
        async with self.sessions() as s:
            return await s.get(EvalRun, run_id)

    async def samples(self, run_id: str) -> list[dict]:
        async with self.sessions() as s:
            rows = await s.scalars(select(EvalSample).where(EvalSample.run_id == run_id).order_by(EvalSample.idx))
            return [r.record for r in rows]

    async def list(self, *, versions: list[str] | None = None, suite: str = "", limit: int = 100,
                   owner: str | None = None) -> list[EvalRun]:
        """Newest first; one owner's runs (None: every owner's)."""
        stmt = select(EvalRun).order_by(EvalRun.created_at.desc()).limit(limit)
        if owner is not None:
            stmt = stmt.where(EvalRun.owner == owner)
        if versions:
            stmt = stmt.where((EvalRun.model_version.in_(versions)) | (EvalRun.model.in_(versions)))
        if suite:
            stmt = stmt.where(EvalRun.suite == suite)
        async with self.sessions() as s:
            return list(await s.scalars(stmt))

    async def active_count(self, owner: str) -> int:
        """Runs of ``owner`` not yet ended."""
        stmt = select(func.count()).select_from(EvalRun).where(EvalRun.owner == owner,
                                                               EvalRun.status.in_(("queued", "running")))
        async with self.sessions() as s:
            return int(await s.scalar(stmt) or 0)

    async def latest_succeeded(self, model_version: str, suite: str, params_hash: str) -> EvalRun | None:
        stmt = (select(EvalRun).where(EvalRun.model_version == model_version, EvalRun.suite == suite,
                                      EvalRun.params_hash == params_hash, EvalRun.status == "succeeded")
                .order_by(EvalRun.finished_at.desc()).limit(1))
        async with self.sessions() as s:
            return await s.scalar(stmt)

    async def mark_running(self, run_id: str) -> None:
        await self._update(run_id, status="running", started_at=utcnow())

    async def progress(self, run_id: str, done: int, total: int) -> None:
        await self._update(run_id, samples_done=done, sample_count=total)

    async def finish_succeeded(self, run_id: str, metrics: dict, samples: list[dict], started: float) -> None:
        async with self.sessions() as s:
            s.add_all(EvalSample(run_id=run_id, idx=i, record=rec) for i, rec in enumerate(samples))
            await s.execute(update(EvalRun).where(EvalRun.id == run_id).values(
                status="succeeded", metrics=metrics, sample_count=len(samples), samples_done=len(samples),
                duration_s=time.monotonic() - started, finished_at=utcnow(), error=""))
            await s.commit()

    async def finish_unsuccessfully(self, run_id: str, status: str, error: str, started: float | None) -> None:
        assert status in ("failed", "cancelled")
        await self._update(run_id, status=status, error=error[:4000], metrics={}, finished_at=utcnow(),
                           duration_s=(time.monotonic() - started) if started else 0.0)

    async def fail_orphans(self) -> int:
        """Runs left queued or running by a previous process of this service can never finish: fail them."""
        async with self.sessions() as s:
            res = await s.execute(update(EvalRun).where(EvalRun.status.notin_(FINAL_STATUSES)).values(
                status="failed", error="the eval service restarted while this run was in progress",
                finished_at=utcnow(), metrics={}))
            await s.commit()
            return res.rowcount or 0

    async def _update(self, run_id: str, **values) -> None:
        async with self.sessions() as s:
            await s.execute(update(EvalRun).where(EvalRun.id == run_id).values(**values))
            await s.commit()
