"""Key and usage storage on the shared database (PostgreSQL or SQLite).

Every call is bounded by ``timeout_s`` and turns any database failure into
:class:`StoreUnavailable`, so callers decide what an outage means (serve from
cache, spool usage) instead of hanging on a dead connection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeVar

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.common.db.auth_tables import ApiKey, UsageRecord
from services.common.db.base import utcnow
from services.common.db.engine import session_factory
from services.common.db.registry import AuditEvent

from . import keys
from .limiter import Limits

T = TypeVar("T")
BOOTSTRAP_ID = "bootstrap"
BOOTSTRAP_SCOPES = ("chat", "train", "eval", "admin")
SCOPES = (*BOOTSTRAP_SCOPES, "batch")
"""``batch`` marks a key whose generations always queue as batch work (see services/gateway/routing_hints.py)."""


class StoreUnavailable(Exception):
    """The database did not answer in time or failed."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What auth needs to decide on a key; cached per replica."""

    id: str
    prefix: str
    secret_hash: str
    name: str
    owner: str
    scopes: tuple[str, ...]
    allowed_models: tuple[str, ...]
    limits: Limits
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyRecord:
        return cls(row.id, row.prefix, row.secret_hash, row.name, row.owner, tuple(row.scopes or ()),
                   tuple(row.allowed_models or ()),
                   Limits(row.rpm, row.tpm, row.daily_token_quota or 0, row.max_concurrent or 0),
                   row.expires_at, row.revoked_at, row.created_at, row.last_used_at)

    def unusable_reason(self, now: datetime) -> str | None:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None


@dataclass(slots=True)
class KeySpec:
    """A key to create; validated by the caller (the admin servicer)."""

    name: str
    owner: str = ""
    scopes: list[str] = field(default_factory=lambda: ["chat"])
    allowed_models: list[str] = field(default_factory=list)
    rpm: int = 60
    tpm: int = 100_000
    daily_token_quota: int | None = None
    max_concurrent: int | None = None
    expires_at: datetime | None = None


USAGE_STATUSES = ("ok", "cancelled", "error")


@dataclass(frozen=True, slots=True)
class UsageRow:
    reservation_id: str
    request_id: str
    key_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    status: str
    latency_s: float
    created_at: datetime

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_report(cls, req) -> UsageRow:
        """The record of a ``ReportUsageRequest``, clamped to the table's columns."""
        return cls(
            reservation_id=(req.reservation_id or f"req:{req.request_id}")[:64], request_id=req.request_id[:128],
            key_id=req.key_id[:36], model=req.model[:200], prompt_tokens=max(0, req.prompt_tokens),
            completion_tokens=max(0, req.completion_tokens),
            status=req.status if req.status in USAGE_STATUSES else "error", latency_s=max(0.0, req.latency_s),
            created_at=utcnow())


@dataclass(frozen=True, slots=True)
class UsageBucket:
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


class Store:
    def __init__(self, engine: AsyncEngine, timeout_s: float = 2.0) -> None:
        self.engine = engine
        self.sessions = session_factory(engine)
        self.timeout_s = timeout_s
        self.dialect = engine.dialect.name

    async def _run(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def body() -> T:
            async with self.sessions() as session:
                return await fn(session)

        try:
            return await asyncio.wait_for(body(), self.timeout_s)
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc

    def _insert(self):
        return pg_insert if self.dialect == "postgresql" else sqlite_insert

    # -- keys -------------------------------------------------------------------------
    async def key_by_prefix(self, prefix: str) -> KeyRecord | None:
        async def q(s: AsyncSession):
            row = await s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            return KeyRecord.of(row) if row is not None else None

        return await self._run(q)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        async def q(s: AsyncSession):
            row = await s.get(ApiKey, key_id)
            return KeyRecord.of(row) if row is not None else None

        return await self._run(q)

    async def create_key(self, spec: KeySpec, actor: str = "system") -> tuple[KeyRecord, str]:
        """Insert a new key (and its audit event); returns it with the secret, which is never stored or shown again."""
        for _ in range(5):  # a prefix collision (54 random bits) is rare but must not fail the call
            secret = keys.generate()
            row = ApiKey(id=uuid.uuid4().hex, prefix=keys.prefix(secret), secret_hash=keys.digest(secret),
                         name=spec.name, owner=spec.owner, scopes=list(spec.scopes),
                         allowed_models=list(spec.allowed_models), rpm=spec.rpm, tpm=spec.tpm,
                         daily_token_quota=spec.daily_token_quota, max_concurrent=spec.max_concurrent,
                         expires_at=spec.expires_at, created_at=utcnow())

            async def add(s: AsyncSession, row=row) -> KeyRecord | None:
                s.add(row)
                s.add(AuditEvent(actor=actor, action="key.create", target=row.id,
                                 details={"prefix": row.prefix, "name": row.name, "scopes": row.scopes}))
                try:
                    await s.commit()
                except IntegrityError:  # the prefix is taken: draw another key
                    await s.rollback()
                    return None
                return KeyRecord.of(row)

            if (record := await self._run(add)) is not None:
                return record, secret
        raise StoreUnavailable("could not allocate a unique key prefix")

    async def list_keys(self, owner: str | None = None, include_revoked: bool = True) -> list[KeyRecord]:
        async def q(s: AsyncSession):
            stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if owner is not None:
                stmt = stmt.where(ApiKey.owner == owner)
            if not include_revoked:
                stmt = stmt.where(ApiKey.revoked_at.is_(None))
            return [KeyRecord.of(r) for r in await s.scalars(stmt)]

        return await self._run(q)

    async def revoke_key(self, key_id: str, actor: str = "system") -> KeyRecord | None:
        """Set revoked_at (once; revoking twice keeps the first time)."""

        async def q(s: AsyncSession):
            row = await s.get(ApiKey, key_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                s.add(AuditEvent(actor=actor, action="key.revoke", target=row.id, details={"prefix": row.prefix}))
                await s.commit()
            return KeyRecord.of(row)

        return await self._run(q)

    async def upsert_bootstrap(self, secret: str, limits: Limits) -> None:
        """Make the configured key of ``llmsvc up`` an admin key with the fixed id ``bootstrap``.

        A changed secret replaces the old one (and clears a revocation); the same
        secret keeps a revocation an operator made, so a restart cannot undo it.
        """
        ins = self._insert()(ApiKey).values(
            id=BOOTSTRAP_ID, prefix=keys.prefix(secret), secret_hash=keys.digest(secret), name="bootstrap",
            owner="system", scopes=list(BOOTSTRAP_SCOPES), allowed_models=[], rpm=limits.rpm, tpm=limits.tpm,
            created_at=utcnow())
        same_secret = ApiKey.secret_hash == ins.excluded.secret_hash
        stmt = ins.on_conflict_do_update(index_elements=[ApiKey.id], set_={
            "prefix": ins.excluded.prefix, "secret_hash": ins.excluded.secret_hash, "scopes": ins.excluded.scopes,
            "rpm": ins.excluded.rpm, "tpm": ins.excluded.tpm,
            "revoked_at": case((same_secret, ApiKey.revoked_at), else_=None),
        })

        async def q(s: AsyncSession):
            await s.execute(stmt)
            await s.commit()

        await self._run(q)

    async def touch(self, used: dict[str, datetime]) -> None:
        async def q(s: AsyncSession):
            for key_id, at in used.items():
                await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=at))
            await s.commit()

        await self._run(q)

    # -- usage ------------------------------------------------------------------------
    async def insert_usage(self, rows: Iterable[UsageRow]) -> set[str]:
        """Insert rows, skipping reservation ids already present; returns the reservation ids that were new."""
        rows = list(rows)
        if not rows:
            return set()

        async def q(s: AsyncSession):
            inserted = await self.insert_usage_in(s, rows)
            await s.commit()
            return inserted

        return await self._run(q)

    async def insert_usage_in(self, session: AsyncSession, rows: list[UsageRow]) -> set[str]:
        """:meth:`insert_usage` in the caller's transaction (which commits it)."""
        # RETURNING yields only the rows actually inserted, which counts the new ones on both dialects.
        stmt = (self._insert()(UsageRecord).on_conflict_do_nothing(index_elements=[UsageRecord.reservation_id])
                .returning(UsageRecord.reservation_id))
        return set((await session.execute(stmt, [r.as_dict() for r in rows])).scalars())

    async def usage_summary(self, key_id: str, since: datetime) -> list[UsageBucket]:
        day = (func.date(func.timezone("UTC", UsageRecord.created_at)) if self.dialect == "postgresql"
               else func.date(UsageRecord.created_at))
        stmt = (select(day.label("day"), UsageRecord.model, func.count(), func.sum(UsageRecord.prompt_tokens),
                       func.sum(UsageRecord.completion_tokens))
                .where(UsageRecord.key_id == key_id, UsageRecord.created_at >= since)
                .group_by(day, UsageRecord.model).order_by(day, UsageRecord.model))

        async def q(s: AsyncSession):
            return [UsageBucket(d.isoformat() if isinstance(d, date) else str(d), m, int(n), int(p or 0), int(c or 0))
                    for d, m, n, p, c in (await s.execute(stmt)).all()]

        return await self._run(q)

    async def purge_usage(self, older_than: timedelta, batch: int = 5000) -> int:
        """Delete usage rows older than ``older_than``, in batches so no lock is held for long."""
        cutoff = utcnow() - older_than
        total = 0
        while True:
            ids = select(UsageRecord.id).where(UsageRecord.created_at < cutoff).limit(batch).scalar_subquery()

            async def q(s: AsyncSession, ids=ids):
                result = await s.execute(delete(UsageRecord).where(UsageRecord.id.in_(ids)))
                await s.commit()
                return result.rowcount or 0

            n = await self._run(q)
            total += n
            if n < batch:
                return total
