"""Prometheus metrics of the trainer service: job states, and training metrics relayed from job events."""

from __future__ import annotations

from prometheus_client import Gauge

from services.common.db.job_tables import JOB_STATUSES

JOBS = Gauge("llmsvc_trainer_jobs", "Fine-tuning jobs by status (from the database).", ["status"])
TRAIN_LOSS = Gauge("llmsvc_train_loss", "Latest training loss reported by a running job.", ["job_id"])
TRAIN_STEP = Gauge("llmsvc_train_step", "Latest optimizer step reported by a running job.", ["job_id"])
TRAIN_TOKENS_PER_S = Gauge("llmsvc_train_tokens_per_second", "Training throughput of a running job (tokens/s).",
                           ["job_id"])
_PER_JOB = (TRAIN_LOSS, TRAIN_STEP, TRAIN_TOKENS_PER_S)


def set_job_counts(counts: dict[str, int]) -> None:
    for status in JOB_STATUSES:
        JOBS.labels(status).set(counts.get(status, 0))


def relay(job_id: str, event: dict) -> None:
    """Copy a trainer ``metrics`` event onto the per-job gauges."""
    for gauge, key in ((TRAIN_LOSS, "loss"), (TRAIN_STEP, "step"), (TRAIN_TOKENS_PER_S, "tokens_per_s")):
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            gauge.labels(job_id).set(value)


def forget(job_id: str) -> None:
    """Drop a finished job's series (its final metrics live in the registry)."""
    for gauge in _PER_JOB:
        try:
            gauge.remove(job_id)
        except KeyError:
            pass
