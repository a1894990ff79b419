"""The trainer service on a real port over a real gRPC channel, with SQLite and with PostgreSQL, running
the real training code (``python -m trainer.run``) on the tiny base model."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from prometheus_client import REGISTRY

from services.common.db import registry
from services.common.db.engine import make_engine, session_factory
from services.common.pb import trainer_pb2 as pb
from services.trainer.store import completeness_problems

from .helpers import CHAT, events_until_end, first_event, job_request, jsonl, rpc_error, upload, versions_dir


async def registered(db_url: str, version_id: str):
    engine = make_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            return await registry.get_version(session, version_id)
    finally:
        await engine.dispose()


async def test_a_job_trains_streams_events_and_registers_a_complete_model(trainer, db_url, store_root):
    f = await upload(trainer.stub, jsonl(CHAT))
    assert (f.format, f.examples, f.status) == ("chat", len(CHAT), "processed")
    job = await trainer.stub.CreateJob(job_request(f.id, suffix="adder", extra={"checkpoint_every": 2}))
    assert job.status == "validating_files" and job.recipe == "sft" and job.id.startswith("ftjob-")

    events = await events_until_end(trainer.stub, job.id)
    messages = [e.message for e in events]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert messages[:4] == [f"Created fine-tuning job: {job.id}", f"Validating training file: {f.id}",
                            "Files validated, moving job to queued state", "Fine-tuning job started"]
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == [1, 2, 3, 4] and all(e.data["train_loss"] > 0 for e in events if e.type == "metrics")
    assert messages[-1] == "The job has successfully completed"

    done = await trainer.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "succeeded" and done.finished_at >= done.created_at
    assert done.fine_tuned_model.startswith("adder-v") and done.trained_tokens > 0
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in messages
    version = await registered(db_url, done.fine_tuned_model)
    assert version is not None and version.job_id == job.id and version.recipe == "sft"
    assert version.parent == str(store_root / "tiny-random") and version.metrics["final_loss"] > 0
    path = Path(version.path)
    assert path == store_root / "adder" / str(version.version) and completeness_problems(path) == []
    assert json.loads((path / "llmsvc.json").read_text())["name"] == "adder"
    assert not (store_root / ".jobs" / job.id / "output").exists()  # moved, not copied

    ckpts = await trainer.stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job.id))
    steps = [c.step for c in ckpts.checkpoints]
    assert 2 in steps and steps == sorted(steps, reverse=True)  # every 2 steps, newest first
    assert all(Path(c.path).is_dir() and c.metrics["train_loss"] > 0 for c in ckpts.checkpoints)
    assert REGISTRY.get_sample_value("llmsvc_trainer_jobs", {"status": "succeeded"}) >= 1


async def test_cancelling_a_running_job_stops_it_and_registers_nothing(trainer, store_root):
    f = await upload(trainer.stub, jsonl(CHAT))
    job = await trainer.stub.CreateJob(job_request(f.id, suffix="cancelled-run", hyper={
        "steps": 100000, "batch_size": 2, "seq_len": 64}))
    await first_event(trainer.stub, job.id, "metrics")  # training is under way
    await trainer.stub.CancelJob(pb.JobRequest(job_id=job.id))
    events = await events_until_end(trainer.stub, job.id)
    done = await trainer.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "cancelled" and not done.fine_tuned_model and done.finished_at
    messages = [e.message for e in events]
    assert "Cancellation requested" in messages and messages[-1] == "Fine-tuning job cancelled"
    assert any(m.startswith("Trainer status: cancelled") for m in messages)  # it stopped on SIGTERM
    assert versions_dir(store_root, "cancelled-run") == []
    # SIGTERM made the trainer checkpoint, so a resumed run would continue from there.
    ckpts = await trainer.stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job.id))
    assert len(ckpts.checkpoints) == 1
    err = await rpc_error(trainer.stub.CancelJob(pb.JobRequest(job_id=job.id)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "already cancelled" in err.details()


async def test_a_model_too_large_for_this_machine_fails_with_the_trainers_reason(trainer, store_root):
    """A preset's size is known only to the trainer: its memory check fails the job with a clear message."""
    docs = [{"text": f"The river {i} flows past {i * 7} hills and {i * 3} quiet towns before the sea."}
            for i in range(8)]
    f = await upload(trainer.stub, jsonl(docs))
    job = await trainer.stub.CreateJob(job_request(f.id, model="preset:8b", suffix="huge", extra={"recipe": "pretrain"},
                                                   hyper={"steps": 2, "batch_size": 2, "seq_len": 64}))
    await events_until_end(trainer.stub, job.id)
    done = await trainer.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "failed" and done.error.code == "training_failed"
    assert "GiB" in done.error.message and "available" in done.error.message
    assert versions_dir(store_root, "huge") == []
