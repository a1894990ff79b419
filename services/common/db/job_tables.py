"""Training files, fine-tuning jobs, their events and checkpoints (owned by the trainer service).

Ids follow OpenAI's: ``file-<hex>``, ``ftjob-<hex>``; events and checkpoints
use integer keys exposed as ``ftevent-<n>`` / ``ftckpt-<n>`` so that cursors
(``after=``) compare as numbers.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, JSONType, UTCDateTime, utcnow

# BIGINT on PostgreSQL, but INTEGER on SQLite: only "INTEGER PRIMARY KEY" auto-increments there.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class TrainingFile(Base):
    __tablename__ = "training_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(1024))
    """Where the content lies in the model store's files folder."""
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    """``chat``, ``preference`` or ``text``: what every line holds."""
    examples: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    """The owner (team) of the key that made it; another owner's keys get 404."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    model: Mapped[str] = mapped_column(String(256))
    """The model as the client named it."""
    base: Mapped[dict] = mapped_column(JSONType, default=dict)
    """What ``model`` resolved to: ``{"base": path, "parent": version id}`` or ``{"preset": name}``."""
    recipe: Mapped[str] = mapped_column(String(32))
    training_file: Mapped[str] = mapped_column(String(1024))
    validation_file: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    hyperparameters: Mapped[dict] = mapped_column(JSONType, default=dict)
    method: Mapped[dict] = mapped_column(JSONType, default=dict)
    extra: Mapped[dict] = mapped_column(JSONType, default=dict)
    """Our extensions: lora, merge_lora, resources (nodes, nproc_per_node)."""
    suffix: Mapped[str] = mapped_column(String(64), default="")
    output_name: Mapped[str] = mapped_column(String(128))
    """Registry name the result is registered under."""
    seed: Mapped[int] = mapped_column(BigInteger)
    job_metadata: Mapped[dict] = mapped_column("metadata", JSONType, default=dict)
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    """The owner (team) of the key that made it; another owner's keys get 404."""
    runner: Mapped[str] = mapped_column(String(16), default="local")
    handle: Mapped[str] = mapped_column(String(256), default="")
    """Runner-specific: a process id, or a Kubernetes Job name."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    result_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSONType, nullable=True)
    """OpenAI's ``{"code", "message", "param"}`` when failed."""
    trainer_status: Mapped[str] = mapped_column(String(16), default="")
    """Last status the trainer itself reported in its events (running, succeeded, failed, cancelled)."""
    trainer_message: Mapped[str] = mapped_column(Text, default="")
    """The trainer's last error message, for the job's ``error``."""
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    """Bytes of the trainer's events file already ingested (so a restart neither skips nor repeats)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    """``message`` or ``metrics``."""
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict | None] = mapped_column(JSONType, nullable=True)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SupervisorLease(Base):
    """Which trainer service instance supervises jobs: one at a time, renewed every tick.

    During a rolling update (or with a second replica) the other instances serve
    reads and cancel requests but leave launching and finishing jobs to the holder.
    """

    __tablename__ = "supervisor_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
