"""This service restarting under a running job: the job is adopted if it kept running, marked failed if it
died meanwhile, and paused then resumed from its checkpoint across a graceful restart. Each test runs its own
services (only the ones it starts share the database), with the stand-in trainer of this folder, whose pace
the test sets; with SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal

import pytest

from services.common.db.engine import make_engine, session_factory
from services.common.db.job_tables import Job
from services.common.pb import trainer_pb2 as pb

from .conftest import standin_runner
from .helpers import CHAT, events_until_end, first_event, job_request, jsonl, upload, versions_dir


@pytest.fixture(autouse=True)
def slow_steps(monkeypatch):
    """0.1 s a step: a 30-step job runs for about 3 s, long enough to restart the service under it."""
    monkeypatch.setenv("STANDIN_STEP_S", "0.1")


async def start_slow_job(running, suffix: str) -> pb.Job:
    f = await upload(running.stub, jsonl(CHAT))
    job = await running.stub.CreateJob(job_request(f.id, suffix=suffix, hyper={"steps": 30},
                                                   extra={"checkpoint_every": 5}))
    await first_event(running.stub, job.id, "metrics")
    return job


async def test_a_restarted_service_adopts_a_job_that_kept_running(own_services, store_root):
    first = await own_services(standin_runner())
    job = await start_slow_job(first, "adopted")
    await first.stop(suspend=False)  # as if the service crashed: the job's process lives on
    second = await own_services(standin_runner())
    await events_until_end(second.stub, job.id)
    done = await second.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "succeeded" and done.fine_tuned_model == "adopted-v1"


async def test_a_job_that_died_while_the_service_was_down_is_marked_failed(own_services, store_root, db_url):
    first = await own_services(standin_runner())
    job = await start_slow_job(first, "orphan")
    await first.stop(suspend=False)
    handle = (await job_row(db_url, job.id)).handle
    os.killpg(int(handle.split(":")[0]), signal.SIGKILL)
    second = await own_services(standin_runner())
    await events_until_end(second.stub, job.id)
    done = await second.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "failed" and done.error.code == "orphaned"
    assert "reported no outcome" in done.error.message and versions_dir(store_root, "orphan") == []


async def test_a_graceful_stop_pauses_jobs_and_the_next_start_resumes_them(own_services, db_url):
    first = await own_services(standin_runner())
    job = await start_slow_job(first, "paused")
    await first.stop(suspend=True)  # SIGTERM: the trainer checkpoints and exits 143
    paused = await job_row(db_url, job.id)
    assert paused.status == "queued" and paused.trainer_status == ""
    second = await own_services(standin_runner())
    events = await events_until_end(second.stub, job.id)
    done = await second.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "succeeded"
    messages = [e.message for e in events]
    assert any("queued again and resumes from its last checkpoint" in m for m in messages)
    assert any(m.startswith("Trainer status: running: resuming at step") for m in messages)


async def job_row(db_url: str, job_id: str) -> Job:
    engine = make_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            return await session.get(Job, job_id)
    finally:
        await engine.dispose()
