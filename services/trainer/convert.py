"""Database rows to ``llmsvc.v1`` trainer messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from services.common.db.job_tables import Job, JobCheckpoint, JobEvent, TrainingFile
from services.common.pb import trainer_pb2 as pb


def ts(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def struct(data: dict | None) -> Struct:
    out = Struct()
    if data:
        out.update(data)
    return out


def to_dict(message: Struct) -> dict:
    return json_format.MessageToDict(message)


def file_msg(row: TrainingFile) -> pb.TrainingFile:
    return pb.TrainingFile(id=row.id, filename=row.filename, bytes=row.bytes, created_at=ts(row.created_at),
                           purpose=row.purpose, status=row.status, format=row.format, examples=row.examples)


def job_msg(job: Job) -> pb.Job:
    msg = pb.Job(
        id=job.id, created_at=ts(job.created_at), finished_at=ts(job.finished_at), model=job.model,
        fine_tuned_model=job.fine_tuned_model or "", status=job.status, training_file=job.training_file,
        validation_file=job.validation_file or "", hyperparameters=struct(job.hyperparameters),
        method=struct(job.method), seed=job.seed, trained_tokens=job.trained_tokens or 0, suffix=job.suffix,
        metadata=job.job_metadata or {}, recipe=job.recipe, owner=job.owner, result_path=job.result_path or "",
    )
    if (job.extra or {}).get("eval_runs"):  # {} while its evals run
        msg.metrics.SetInParent()
        msg.metrics.update((job.extra or {}).get("eval_metrics") or {})
    if job.error:
        msg.error.CopyFrom(pb.JobError(code=job.error.get("code") or "", message=job.error.get("message") or "",
                                       param=job.error.get("param") or ""))
    return msg


def event_msg(ev: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(id=ev.id, job_id=ev.job_id, created_at=ts(ev.created_at), level=ev.level, type=ev.type,
                       message=ev.message, data=struct(ev.data))


def checkpoint_msg(row: JobCheckpoint) -> pb.Checkpoint:
    numbers = {k: float(v) for k, v in (row.metrics or {}).items() if isinstance(v, (int, float))}
    return pb.Checkpoint(id=f"ftckpt-{row.id}", job_id=row.job_id, created_at=ts(row.created_at), step=row.step,
                         path=row.path, metrics=numbers)
