"""Ingesting the trainer's events file: complete lines only, exactly once, metrics relayed to Prometheus."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY
from sqlalchemy import select

from services.common.db.engine import make_engine, session_factory, sqlite_url
from services.common.db.job_tables import Job, JobCheckpoint, JobEvent
from services.common.db.migrate import upgrade_async
from services.trainer import metrics
from services.trainer.events import ingest


def line(**fields) -> str:
    return json.dumps({"ts": 1.0, **fields}) + "\n"


async def test_events_are_ingested_once_and_metrics_relayed(tmp_path):
    url = sqlite_url(tmp_path / "db.sqlite")
    await upgrade_async(url)
    engine = make_engine(url)
    events = tmp_path / "events.jsonl"
    events.write_text(line(type="status", status="running", message="") +
                      line(type="metrics", step=1, loss=2.5, grad_norm=1.0, lr=1e-4, tokens_per_s=900.0, tokens=64) +
                      '{"type": "metrics", "step": 2, "lo')  # the trainer is still writing this one
    async with session_factory(engine)() as session:
        job = Job(id="ftjob-x", status="running", model="m", recipe="sft", training_file="f", output_name="m-ft",
                  seed=0, hyperparameters={"steps": 10})
        session.add(job)
        await session.commit()
        first = await ingest(session, job, events)
        assert first.count == 2 and first.status == "running" and job.trained_tokens == 64
        assert REGISTRY.get_sample_value("llmsvc_train_loss", {"job_id": "ftjob-x"}) == 2.5
        assert REGISTRY.get_sample_value("llmsvc_train_tokens_per_second", {"job_id": "ftjob-x"}) == 900.0
        assert (await ingest(session, job, events)).count == 0  # nothing new: the half line waits

        with events.open("a") as f:
            f.write('ss": 1.5, "tokens_per_s": 950.0}\n' + line(type="checkpoint", step=2, path="/ckpt/step_2") +
                    line(type="message", level="error", message="disk full") + "not json\n")
        second = await ingest(session, job, events)
        assert second.count == 3 and second.errors == ["disk full"] and job.trainer_message == "disk full"
        assert REGISTRY.get_sample_value("llmsvc_train_step", {"job_id": "ftjob-x"}) == 2
        rows = list(await session.scalars(select(JobEvent).order_by(JobEvent.id)))
        assert [r.type for r in rows] == ["message", "metrics", "metrics", "message", "message"]
        assert rows[2].data["train_loss"] == 1.5 and rows[2].message == "Step 2/10: training loss=1.5000"
        assert rows[-1].level == "error"
        (ckpt,) = await session.scalars(select(JobCheckpoint))
        assert (ckpt.step, ckpt.path, ckpt.metrics) == (2, "/ckpt/step_2", {"step": 2, "train_loss": 1.5})
        assert job.events_offset == events.stat().st_size
    metrics.forget("ftjob-x")
    assert REGISTRY.get_sample_value("llmsvc_train_loss", {"job_id": "ftjob-x"}) is None
    await engine.dispose()
