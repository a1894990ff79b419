"""The trainer service with the Kubernetes runner: jobs become Indexed Jobs, and their status decides the end.

No API server and no pods run here. The runner's real ``kubernetes`` client talks to the fake API server of
fake_k8s.py, and the test plays the pods: it reads the spec the service wrote to the store and writes what
``trainer.run`` would write there (events, a checkpoint, the output folder), as pods do on the store PVC.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

from services.common.pb import trainer_pb2 as pb
from services.trainer.config import KubernetesSettings
from services.trainer.runners.k8s_objects import object_name
from services.trainer.runners.kubernetes import KubernetesRunner
from services.trainer.service import start
from trainer.spec import parse_spec

from .conftest import Running, settings_for
from .fake_k8s import RECORDED, FakeKubernetesAPI
from .helpers import CHAT, events_until_end, job_request, jsonl, upload, versions_dir


@pytest.fixture
async def k8s(db_url, store_root, data_dir):
    api = FakeKubernetesAPI()
    runner = KubernetesRunner(api.api_client(), KubernetesSettings(namespace="llmsvc", gpus_per_node=0),
                              store_path=str(store_root), module="trainer.run", grace_s=30)
    running = Running(await start(settings_for(db_url, store_root, data_dir), runner=runner))
    yield running, api
    await running.stop()
    api.close()
    assert not api.refused, f"calls the chart's RBAC does not grant: {api.refused}"


async def until(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)
    return value


def play_pods(job_dir: Path, base: Path, *, finish: bool) -> dict:
    """What rank 0's ``trainer.run`` writes on the store: events, a checkpoint, and (if it finishes) the model."""
    spec = json.loads((job_dir / "spec.json").read_text())
    parse_spec(spec)  # a spec the trainer in the pod accepts
    ckpt = Path(spec["checkpoint_dir"]) / "step_00000001"
    ckpt.mkdir(parents=True)
    lines = [{"type": "status", "status": "running", "message": "sft job started"},
             {"type": "metrics", "step": 1, "loss": 3.0, "tokens_per_s": 100.0, "tokens": 128},
             {"type": "checkpoint", "step": 1, "path": str(ckpt)}]
    if finish:
        tmp = Path(spec["output_dir"] + ".tmp")
        shutil.copytree(base, tmp)
        (tmp / "llmsvc.json").write_text(json.dumps({"name": spec["name"], "metrics": {"final_loss": 3.0}}))
        tmp.rename(spec["output_dir"])
        lines.append({"type": "status", "status": "succeeded", "message": "done"})
    Path(job_dir / "events.jsonl").write_text("".join(json.dumps({"ts": 1.0, **e}) + "\n" for e in lines))
    return spec


async def test_a_job_runs_as_an_indexed_job_and_its_completion_publishes_the_model(k8s, store_root, default_model):
    running, api = k8s
    f = await upload(running.stub, jsonl(CHAT))
    job = await running.stub.CreateJob(job_request(f.id, suffix="on-k8s"))
    name = object_name(job.id)
    await until(lambda: f"jobs/{name}" in api.objects)
    assert f"services/{name}" in api.objects
    play_pods(store_root / ".jobs" / job.id, default_model, finish=True)
    api.statuses[name] = [RECORDED["running"], RECORDED["succeeded"]]
    events = await events_until_end(running.stub, job.id)
    done = await running.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "succeeded" and done.fine_tuned_model == "on-k8s-v1" and done.trained_tokens == 128
    assert [e.data["train_loss"] for e in events if e.type == "metrics"] == [3.0]
    assert [p.name for p in versions_dir(store_root, "on-k8s")] == ["1"]
    # The rendezvous Service is deleted once the Job is done; the Job stays for its logs (TTL).
    await until(lambda: ("DELETE", f"/api/v1/namespaces/llmsvc/services/{name}") in api.calls())
    assert f"jobs/{name}" in api.objects


async def test_a_failed_job_fails_and_a_cancelled_one_is_deleted(k8s, store_root, default_model):
    running, api = k8s
    f = await upload(running.stub, jsonl(CHAT))
    failing = await running.stub.CreateJob(job_request(f.id, suffix="k8s-fails"))
    await until(lambda: f"jobs/{object_name(failing.id)}" in api.objects)
    api.statuses[object_name(failing.id)] = [RECORDED["failing"], RECORDED["failed"]]
    await events_until_end(running.stub, failing.id)
    done = await running.stub.GetJob(pb.JobRequest(job_id=failing.id))
    assert done.status == "failed" and "BackoffLimitExceeded" in done.error.message

    job = await running.stub.CreateJob(job_request(f.id, suffix="k8s-cancelled"))
    name = object_name(job.id)
    await until(lambda: f"jobs/{name}" in api.objects)
    play_pods(store_root / ".jobs" / job.id, default_model, finish=False)
    await running.stub.CancelJob(pb.JobRequest(job_id=job.id))
    delete = await until(lambda: next((r for r in api.requests if r.method == "DELETE" and name in r.path
                                       and "/jobs/" in r.path), None))
    assert delete.body["propagationPolicy"] == "Foreground"
    api.finish_deletion(name)  # the pods checkpointed and exited
    await events_until_end(running.stub, job.id)
    done = await running.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "cancelled" and versions_dir(store_root, "k8s-cancelled") == []
