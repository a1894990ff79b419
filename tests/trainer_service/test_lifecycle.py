"""Job lifecycle paths the real trainer does not produce on demand (a crash mid-run, a "success" without a
complete model), versions and pagination. They run the stand-in trainer of this folder (standin_trainer.py),
with SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from services.common.pb import trainer_pb2 as pb

from .conftest import standin_runner
from .helpers import CHAT, events_until_end, job_request, jsonl, upload, versions_dir


@pytest.fixture(scope="module")
async def standin(services):
    return await services(standin_runner())


async def run_to_end(running, suffix: str, **kw) -> pb.Job:
    f = await upload(running.stub, jsonl(CHAT))
    job = await running.stub.CreateJob(job_request(f.id, suffix=suffix, **kw))
    await events_until_end(running.stub, job.id)
    return await running.stub.GetJob(pb.JobRequest(job_id=job.id))


async def test_a_crash_fails_the_job_with_the_trainers_reason(standin, store_root):
    done = await run_to_end(standin, "crash-test")
    assert done.status == "failed" and done.error.code == "training_failed"
    assert done.error.message == "out of memory at step 2"
    assert versions_dir(store_root, "crash-test") == [] and not done.fine_tuned_model


async def test_success_without_a_complete_model_registers_nothing(standin, store_root):
    done = await run_to_end(standin, "incomplete-test")
    assert done.status == "failed" and done.error.code == "incomplete_model"
    assert "model.safetensors" in done.error.message or "no weights" in done.error.message
    assert versions_dir(store_root, "incomplete-test") == []


async def test_each_success_is_the_next_version(standin, store_root):
    first = await run_to_end(standin, "versioned")
    second = await run_to_end(standin, "versioned")
    assert (first.fine_tuned_model, second.fine_tuned_model) == ("versioned-v1", "versioned-v2")
    assert [p.name for p in versions_dir(store_root, "versioned")] == ["1", "2"]


async def test_lists_page_with_after_and_has_more(standin):
    f = await upload(standin.stub, jsonl(CHAT))
    created = [await standin.stub.CreateJob(job_request(f.id, suffix="paged")) for _ in range(3)]
    for job in created:
        await events_until_end(standin.stub, job.id)
    newest = [j.id for j in reversed(created)]
    page1 = await standin.stub.ListJobs(pb.ListJobsRequest(limit=2))
    assert [j.id for j in page1.jobs] == newest[:2] and page1.has_more
    page2 = await standin.stub.ListJobs(pb.ListJobsRequest(limit=2, after=page1.jobs[-1].id))
    assert page2.jobs[0].id == newest[2]
    events = await standin.stub.ListJobEvents(pb.ListJobEventsRequest(job_id=created[0].id, limit=3))
    assert len(events.events) == 3 and events.has_more
    assert [e.id for e in events.events] == sorted((e.id for e in events.events), reverse=True)
    older = await standin.stub.ListJobEvents(pb.ListJobEventsRequest(job_id=created[0].id, after=events.events[-1].id,
                                                                      limit=100))
    assert not older.has_more and older.events[-1].message == f"Created fine-tuning job: {created[0].id}"
    assert all(e.id < events.events[-1].id for e in older.events)


async def test_only_the_checkpoints_the_trainer_keeps_are_listed(standin):
    done = await run_to_end(standin, "ckpts", hyper={"steps": 9}, extra={"checkpoint_every": 1, "keep_checkpoints": 2})
    ckpts = await standin.stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=done.id))
    assert [c.step for c in ckpts.checkpoints] == [9, 8]
    assert [c.metrics["train_loss"] for c in ckpts.checkpoints] == pytest.approx([2 / 9, 2 / 8])
