"""Jobs, events and checkpoints in the database: the queries the servicer and the supervisor share."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db.base import utcnow
from services.common.db.job_tables import TERMINAL_STATUSES, Job, JobCheckpoint, JobEvent, SupervisorLease

from .pagination import older_than


async def add_event(session: AsyncSession, job_id: str, message: str, *, level: str = "info",
                    data: dict | None = None) -> None:
    session.add(JobEvent(job_id=job_id, level=level, type="message", message=message, data=data))


async def set_status(session: AsyncSession, job: Job, status: str, message: str, *, level: str = "info",
                     error: dict | None = None) -> None:
    """Move ``job`` to ``status`` with an event saying why; commits."""
    job.status = status
    if status == "running" and job.started_at is None:
        job.started_at = utcnow()
    if status in TERMINAL_STATUSES:
        job.finished_at = utcnow()
    if error is not None:
        job.error = error
    await add_event(session, job.id, message, level=level)
    await session.commit()


async def list_jobs(session: AsyncSession, after: str = "", limit: int = 20,
                    metadata: dict[str, str] | None = None, owner: str | None = None) -> tuple[list[Job], bool]:
    """Newest first; ``after`` is the id of the last job of the previous page; one owner's (None: all)."""
    stmt = select(Job)
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    if after and (cursor := await session.get(Job, after)) is not None:
        stmt = stmt.where(older_than(Job.created_at, Job.id, cursor))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc())
    if not metadata:
        rows = list(await session.scalars(stmt.limit(limit + 1)))
        return rows[:limit], len(rows) > limit
    # JSON filters differ between SQLite and PostgreSQL; metadata filters are rare, so filter here.
    rows = [j for j in await session.scalars(stmt)
            if all((j.job_metadata or {}).get(k) == v for k, v in metadata.items())]
    return rows[:limit], len(rows) > limit


async def list_events(session: AsyncSession, job_id: str, after: int = 0,
                      limit: int = 20) -> tuple[list[JobEvent], bool]:
    """Newest first; ``after`` is the id of the last event of the previous page."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        stmt = stmt.where(JobEvent.id < after)
    rows = list(await session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


async def events_since(session: AsyncSession, job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
    """Oldest first, with ids above ``after`` (for streaming)."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(limit)
    return list(await session.scalars(stmt))


async def list_checkpoints(session: AsyncSession, job_id: str, after: int = 0,
                           limit: int = 10) -> tuple[list[JobCheckpoint], bool]:
    stmt = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    if after:
        stmt = stmt.where(JobCheckpoint.id < after)
    rows = list(await session.scalars(stmt.order_by(JobCheckpoint.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


async def jobs_in(session: AsyncSession, *statuses: str) -> list[Job]:
    stmt = select(Job).where(Job.status.in_(statuses)).order_by(Job.created_at, Job.id)
    return list(await session.scalars(stmt))


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: n for status, n in rows}


LEASE = "supervisor"


async def acquire_lease(session: AsyncSession, holder: str, ttl_s: float) -> bool:
    """Take or renew the supervisor lease; True when ``holder`` has it until ``ttl_s`` from now."""
    now = utcnow()
    until = now + timedelta(seconds=ttl_s)
    result = await session.execute(
        update(SupervisorLease)
        .where(SupervisorLease.name == LEASE, or_(SupervisorLease.holder == holder, SupervisorLease.expires_at < now))
        .values(holder=holder, expires_at=until)
    )
    if result.rowcount == 1:
        await session.commit()
        return True
    if await session.get(SupervisorLease, LEASE) is not None:
        await session.rollback()
        return False
    session.add(SupervisorLease(name=LEASE, holder=holder, expires_at=until))
    try:
        await session.commit()
        return True
    except IntegrityError:  # another instance created it first
        await session.rollback()
        return False


async def release_lease(session: AsyncSession, holder: str) -> None:
    await session.execute(update(SupervisorLease).where(SupervisorLease.name == LEASE, SupervisorLease.holder == holder)
                          .values(expires_at=utcnow()))
    await session.commit()
