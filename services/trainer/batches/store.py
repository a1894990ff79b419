"""Batches as rows: made from a checked input file, read and listed for their owner, cancelled on request.
Status changes after create belong to the :class:`~.runner.BatchRunner`, except ``cancelling``."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db.base import utcnow
from services.common.db.batch_tables import Batch, BatchLine
from services.common.identity import Identity
from services.common.pb import batches_pb2 as pb

from ..convert import ts
from ..files import FileStore
from ..pagination import older_than
from .validate import BadBatchRequest, check_request, parse_file, window_seconds

INSERT_CHUNK = 1000


class BatchNotFound(LookupError):
    pass


def batch_msg(b: Batch) -> pb.Batch:
    return pb.Batch(
        id=b.id, endpoint=b.endpoint, input_file_id=b.input_file_id, completion_window=b.completion_window,
        status=b.status, output_file_id=b.output_file_id, error_file_id=b.error_file_id,
        created_at=ts(b.created_at), in_progress_at=ts(b.in_progress_at), expires_at=ts(b.expires_at),
        finalizing_at=ts(b.finalizing_at), completed_at=ts(b.completed_at), failed_at=ts(b.failed_at),
        expired_at=ts(b.expired_at), cancelling_at=ts(b.cancelling_at), cancelled_at=ts(b.cancelled_at),
        request_counts=pb.BatchRequestCounts(total=b.total, completed=b.completed, failed=b.failed),
        metadata=b.batch_metadata or {}, model=b.model, input_tokens=b.input_tokens, output_tokens=b.output_tokens,
        owner=b.owner,
        errors=[pb.BatchError(code=e.get("code") or "", message=e.get("message") or "", param=e.get("param") or "",
                              line=e.get("line") or 0) for e in b.errors or ()])


class BatchStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], files: FileStore, max_lines: int) -> None:
        self.sessions, self.files, self.max_lines = sessions, files, max_lines

    async def create(self, who: Identity, req: pb.CreateBatchRequest) -> Batch:
        """A new batch: ``in_progress`` with its lines, or ``failed`` with the lines' problems. Raises
        :class:`BadBatchRequest` (a field of the request) or :class:`BatchNotFound` (the input file)."""
        metadata = dict(req.metadata)
        check_request(req.endpoint, metadata)
        window_s = window_seconds(req.completion_window)
        f = await self.files.get(req.input_file_id) if req.input_file_id else None
        if f is None or not who.may_see(f.owner):
            raise BatchNotFound(f"No such File object: {req.input_file_id[:100]}")
        if f.purpose != "batch":
            raise BadBatchRequest(f"The file {f.id} was uploaded with purpose {f.purpose!r}; a batch reads a file "
                                  "uploaded with purpose 'batch'.", "input_file_id")
        parsed = await asyncio.to_thread(parse_file, f.path, req.endpoint, self.max_lines)
        now = utcnow()
        batch = Batch(id=f"batch_{secrets.token_hex(12)}", owner=who.owner, key_id=who.key_id,
                      endpoint=req.endpoint, input_file_id=f.id, completion_window=req.completion_window,
                      model=next(iter(parsed.models)) if len(parsed.models) == 1 else "", batch_metadata=metadata,
                      errors=[], output_file_id="", error_file_id="", total=0, completed=0, failed=0,
                      input_tokens=0, output_tokens=0, created_at=now, expires_at=now + timedelta(seconds=window_s))
        if parsed.error_count:
            batch.status, batch.failed_at, batch.errors = "failed", now, parsed.errors
        else:
            batch.status, batch.in_progress_at, batch.total = "in_progress", now, len(parsed.lines)
        async with self.sessions() as session, session.begin():
            session.add(batch)
            await session.flush()
            if not parsed.error_count:
                rows = [{"batch_id": batch.id, "line": ln.number, "custom_id": ln.custom_id, "body": ln.body,
                         "done": False, "status_code": 0, "request_id": "", "response": ""}
                        for ln in parsed.lines]
                for i in range(0, len(rows), INSERT_CHUNK):
                    await session.execute(insert(BatchLine), rows[i:i + INSERT_CHUNK])
        return batch

    async def get(self, who: Identity, batch_id: str) -> Batch:
        async with self.sessions() as session:
            batch = await session.get(Batch, batch_id)
        if batch is None or not who.may_see(batch.owner):
            raise BatchNotFound(f"No batch found with id '{batch_id[:100]}'.")
        return batch

    async def list(self, who: Identity, after: str, limit: int) -> tuple[list[Batch], bool]:
        async with self.sessions() as session:
            stmt = select(Batch)
            if (owner := who.owner_filter()) is not None:
                stmt = stmt.where(Batch.owner == owner)
            if after and (cursor := await session.get(Batch, after)) is not None and who.may_see(cursor.owner):
                stmt = stmt.where(older_than(Batch.created_at, Batch.id, cursor))
            rows = list(await session.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc())
                                              .limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    async def cancel(self, who: Identity, batch_id: str) -> Batch:
        """Mark a running batch ``cancelling`` (the runner stops it); an ended one is returned as it is."""
        await self.get(who, batch_id)
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Batch).where(Batch.id == batch_id, Batch.status.in_(("validating", "in_progress")))
                .values(status="cancelling", cancelling_at=utcnow()))
        return await self.get(who, batch_id)
