"""Eval runs and their per-sample records.

A run's ``metrics`` are written only in the same transaction that sets
``status='succeeded'``; a failed or cancelled run keeps its progress count and
its error, never metrics, so nothing partial can pass for a result.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, JSONType, UTCDateTime, utcnow

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class EvalRun(Base):
    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_version_suite", "model_version", "suite", "params_hash"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    """The name as requested: an alias, a version id, or a served model name."""
    model_version: Mapped[str] = mapped_column(String(200))
    """What the name resolved to when the run was created (a registry version id or served name)."""
    suite: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSONType, default=dict)
    """The suite's parameters with defaults filled in."""
    params_hash: Mapped[str] = mapped_column(String(64))
    """sha256 of the canonical params plus the data file's hash: runs are comparable when equal."""
    status: Mapped[str] = mapped_column(String(16), default="queued")
    metrics: Mapped[dict] = mapped_column(JSONType, default=dict)
    """``{name: {value, stderr, ci_low, ci_high, higher_is_better}}``; empty unless succeeded."""
    sample_count: Mapped[int] = mapped_column(Integer, default=0)
    samples_done: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    owner: Mapped[str] = mapped_column(String(200), default="", server_default="", index=True)
    """The owner (team) of the key that made it; another owner's keys get 404 (runs the promoter makes: none)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EvalSample(Base):
    __tablename__ = "eval_samples"
    __table_args__ = (UniqueConstraint("run_id", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict] = mapped_column(JSONType, default=dict)
    """The sample's input, the model's output and its score, as the suite defines them."""
