"""A job still running past the service's deadline (``max_job_hours``) is stopped, after a checkpoint, and
fails with ``deadline_exceeded``; nothing is registered. The real trainer, on a real port."""

from __future__ import annotations

from services.common.pb import trainer_pb2 as pb
from services.trainer.service import start

from .conftest import Running, real_runner, settings_for
from .helpers import CHAT, events_until_end, job_request, jsonl, upload, versions_dir


async def test_a_job_past_its_deadline_is_stopped_and_fails(db_url, store_root, data_dir):
    settings = settings_for(db_url, store_root, data_dir).model_copy(update={"max_job_hours": 3 / 3600})
    running = Running(await start(settings, runner=real_runner()))
    try:
        f = await upload(running.stub, jsonl(CHAT))
        job = await running.stub.CreateJob(job_request(f.id, suffix="deadline", hyper={
            "steps": 100000, "batch_size": 2, "seq_len": 64}))
        events = await events_until_end(running.stub, job.id)
        done = await running.stub.GetJob(pb.JobRequest(job_id=job.id))
        assert done.status == "failed" and done.error.code == "deadline_exceeded" and not done.fine_tuned_model
        assert any("past its deadline" in e.message for e in events)
        assert versions_dir(store_root, "deadline") == []
    finally:
        await running.stop()
