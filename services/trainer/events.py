"""Ingest the trainer's events file (JSON lines) into job_events and job_checkpoints.

The trainer appends one JSON object per line (see trainer/README.md). We read
from the byte offset stored on the job, take only complete lines (a line still
being written has no newline yet), and store the new offset in the same
transaction as the rows, so a restart of this service neither skips nor repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db.job_tables import Job, JobCheckpoint, JobEvent

from . import metrics
from .spec import DEFAULT_KEEP

log = logging.getLogger(__name__)
_LEVELS = {"warning": "warn", "warn": "warn", "error": "error", "critical": "error"}


@dataclass
class Ingested:
    status: str = ""
    """Last status the trainer reported (running, succeeded, failed, cancelled) in this batch."""
    status_message: str = ""
    errors: list[str] = field(default_factory=list)
    count: int = 0
    checkpoints: int = 0


def read_new_lines(path: Path, offset: int, max_bytes: int = 4 << 20) -> tuple[list[bytes], int]:
    """Complete lines after ``offset`` and the offset after the last of them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    return chunk[: end + 1].splitlines(), offset + end + 1


def _num(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def metrics_event(job: Job, ev: dict) -> JobEvent:
    step, loss = _num(ev.get("step")), _num(ev.get("loss"))
    total = job.hyperparameters.get("steps")
    data = {"step": step, "train_loss": loss, "total_steps": total, "grad_norm": _num(ev.get("grad_norm")),
            "lr": _num(ev.get("lr")), "tokens_per_s": _num(ev.get("tokens_per_s"))}
    for key in ("valid_loss", "train_mean_token_accuracy", "valid_mean_token_accuracy", "tokens"):
        if _num(ev.get(key)) is not None:
            data[key] = ev[key]
    loss_text = f"{loss:.4f}" if loss is not None else "n/a"
    return JobEvent(job_id=job.id, type="metrics", level="info",
                    message=f"Step {step}/{total}: training loss={loss_text}", data=data)


def _apply(session: AsyncSession, job: Job, ev: dict, out: Ingested, last_loss: dict) -> None:
    kind = ev.get("type")
    if kind == "metrics":
        row = metrics_event(job, ev)
        last_loss.update(step=row.data["step"], train_loss=row.data["train_loss"])
        if _num(ev.get("tokens")) is not None:
            job.trained_tokens = int(ev["tokens"])
        metrics.relay(job.id, ev)
        session.add(row)
    elif kind == "checkpoint":
        step = int(_num(ev.get("step")) or 0)
        ckpt_metrics = {"step": step}
        if last_loss.get("train_loss") is not None:
            ckpt_metrics["train_loss"] = last_loss["train_loss"]
        session.add(JobCheckpoint(job_id=job.id, step=step, path=str(ev.get("path", "")), metrics=ckpt_metrics))
        out.checkpoints += 1
        session.add(JobEvent(job_id=job.id, type="message", level="info", message=f"Checkpoint saved at step {step}",
                             data={"step": step, "path": ev.get("path")}))
    elif kind == "status":
        out.status, out.status_message = str(ev.get("status", "")), str(ev.get("message") or "")
        job.trainer_status = out.status[:16]
        if out.status == "failed":
            out.errors.append(out.status_message)
            job.trainer_message = out.status_message
        level = "error" if out.status == "failed" else "info"
        text = f"Trainer status: {out.status}" + (f": {out.status_message}" if out.status_message else "")
        session.add(JobEvent(job_id=job.id, type="message", level=level, message=text))
    elif kind == "message":
        level = _LEVELS.get(str(ev.get("level", "info")).lower(), "info")
        if level == "error":
            out.errors.append(str(ev.get("message", "")))
            job.trainer_message = str(ev.get("message", ""))
        session.add(JobEvent(job_id=job.id, type="message", level=level, message=str(ev.get("message", ""))))


async def ingest(session: AsyncSession, job: Job, path: Path, last_loss: dict | None = None) -> Ingested:
    """Store the events appended since the last call; commits.

    ``last_loss`` carries the latest step and loss between calls, for the metrics of checkpoints.
    """
    lines, offset = await asyncio.to_thread(read_new_lines, path, job.events_offset)
    out = Ingested()
    if not lines:
        return out
    last_loss = {} if last_loss is None else last_loss
    for raw in lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            log.warning("job %s: skipping an unreadable event line: %r", job.id, raw[:200])
            continue
        if isinstance(ev, dict):
            _apply(session, job, ev, out, last_loss)
            out.count += 1
    job.events_offset = offset
    if out.checkpoints:
        await _prune_checkpoints(session, job)
    await session.commit()
    return out


async def _prune_checkpoints(session: AsyncSession, job: Job) -> None:
    """Keep the rows of the checkpoints the trainer keeps: its newest ``keep_checkpoints``."""
    await session.flush()
    keep = int(job.extra.get("keep_checkpoints") or DEFAULT_KEEP)
    newest = select(JobCheckpoint.id).where(JobCheckpoint.job_id == job.id).order_by(JobCheckpoint.step.desc(),
                                                                                     JobCheckpoint.id.desc())
    kept = list(await session.scalars(newest.limit(keep)))
    await session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id, JobCheckpoint.id.not_in(kept)))
