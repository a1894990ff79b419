"""Batches of the Batch API and their lines, owned like every other object.

A line's result is written in the same transaction that marks it done and counts it in its batch, so a
restart finds every line either done (with its result) or not started: nothing is lost and nothing is counted
twice. The output and error files are made from these rows when the batch ends.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, update
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

RUNNABLE_STATUSES = ("in_progress", "finalizing", "cancelling")
"""Statuses the batch runner picks a batch up in (to run its lines, finish writing it, or stop it)."""
TERMINAL_STATUSES = ("failed", "completed", "expired", "cancelled")


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    """The owner (team) of the key that made it; another owner's keys get 404."""
    key_id: Mapped[str] = mapped_column(String(64), default="")
    """The key that made it: its lines are admitted, limited and charged as this key's requests."""
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str] = mapped_column(String(256), default="")
    batch_metadata: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    errors: Mapped[list] = mapped_column(JSON, default=list)
    """Problems of the input file found at create ({code, message, param, line}); the batch is then failed."""
    output_file_id: Mapped[str] = mapped_column(String(64), default="")
    error_file_id: Mapped[str] = mapped_column(String(64), default="")
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchLine(Base):
    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(String(64), ForeignKey("batches.id", ondelete="CASCADE"),
                                          primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    """1-based line number in the input file."""
    custom_id: Mapped[str] = mapped_column(String(512))
    body: Mapped[str] = mapped_column(Text)
    """The request body as the input file holds it (JSON)."""
    done: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    status_code: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[str] = mapped_column(String(128), default="")
    response: Mapped[str] = mapped_column(Text, default="")
    """The response body the gateway answered (JSON), once done."""
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


async def record_line(session, batch_id: str, line: int, status_code: int, request_id: str, response: str,
                      input_tokens: int, output_tokens: int) -> bool:
    """Mark a line done with its answer and count it in its batch, in the caller's transaction; False when the
    line was already done (a line is counted once, whoever records it first: the gateway that made the
    answer, or the runner that received it)."""
    done = await session.execute(
        update(BatchLine).where(BatchLine.batch_id == batch_id, BatchLine.line == line, BatchLine.done.is_(False))
        .values(done=True, status_code=status_code, request_id=request_id[:128], response=response,
                finished_at=utcnow()))
    if done.rowcount != 1:
        return False
    ok = 200 <= status_code < 300
    await session.execute(update(Batch).where(Batch.id == batch_id).values(
        completed=Batch.completed + int(ok), failed=Batch.failed + int(not ok),
        input_tokens=Batch.input_tokens + input_tokens, output_tokens=Batch.output_tokens + output_tokens))
    return True
