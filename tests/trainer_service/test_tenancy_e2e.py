"""Tenants stay apart on files and fine-tuning jobs: the official ``openai`` client, one key per tenant, a real
gateway, auth and trainer service on PostgreSQL (no worker: nothing here serves).

Every object belongs to the owner (team) of the key that made it. Another owner's key gets 404 on each
route, exactly as for an id that never existed, and the object it tried is unharmed; a key of the same owner
shares it; an ``admin`` key sees all. Behind the gateway the trainer acts only on an identity signed with the
deployment's internal secret: a call that carries none, or one signed with another secret, is refused.
"""

from __future__ import annotations

import time

import grpc
import httpx
import openai
import pytest

from services.common.identity import Identity, IdentityCodec
from services.common.pb import trainer_pb2 as pb
from services.common.pb import trainer_pb2_grpc

from .helpers import CHAT, jsonl, trainer_only_stack

SCOPES = ["chat", "train", "eval"]


@pytest.fixture(scope="module")
def tenancy_stack(tmp_path_factory, default_model, api_key, pg_database):
    with trainer_only_stack(tmp_path_factory.mktemp("tenancy-stack"), default_model, api_key,
                            database_url=pg_database(),
                            extra_env={"LLMSVC_TRAINER_MAX_ACTIVE_JOBS_PER_OWNER": "2"}) as stack:
        yield stack


@pytest.fixture(scope="module")
def clients(tenancy_stack, api_key) -> dict[str, openai.OpenAI]:
    base = tenancy_stack.cfg.base_url

    def key(name: str, owner: str) -> str:
        r = httpx.post(f"{base}/admin/keys", json={"name": name, "owner": owner, "scopes": SCOPES},
                       headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["key"]

    keys = {"alice": key("alice", "team-a"), "alice2": key("alice2", "team-a"), "bob": key("bob", "team-b"),
            "carol": key("carol", "team-c"), "admin": api_key}
    return {who: openai.OpenAI(base_url=base, api_key=k, max_retries=0, timeout=60) for who, k in keys.items()}


def _not_found(call, *args, **kwargs) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        call(*args, **kwargs)
    assert err.value.status_code == 404


def test_another_owners_file_is_404_on_every_route_and_stays_whole(clients):
    alice, alice2, bob, admin = (clients[k] for k in ("alice", "alice2", "bob", "admin"))
    data = jsonl(CHAT)
    f = alice.files.create(file=("alice.jsonl", data), purpose="fine-tune")

    _not_found(bob.files.retrieve, f.id)
    _not_found(bob.files.content, f.id)
    _not_found(bob.files.delete, f.id)
    assert f.id not in [x.id for x in bob.files.list()]
    with pytest.raises(openai.BadRequestError) as err:  # the same answer as for a file that never was
        bob.fine_tuning.jobs.create(model="tiny-random", training_file=f.id)
    assert err.value.body["param"] == "training_file" and f"no file with id '{f.id}'" in err.value.message

    assert alice.files.content(f.id).read() == data  # unharmed
    assert alice2.files.retrieve(f.id).id == f.id  # a key of the same owner shares it
    assert f.id in [x.id for x in alice2.files.list()]
    assert f.id in [x.id for x in admin.files.list()]


def test_a_path_in_the_store_is_for_admin_keys_only(clients, tenancy_stack):
    f = clients["alice"].files.create(file=("alice.jsonl", jsonl(CHAT)), purpose="fine-tune")
    stored = next((tenancy_stack.cfg.home / "models").rglob(f"{f.id}*"))
    with pytest.raises(openai.BadRequestError) as err:
        clients["bob"].fine_tuning.jobs.create(model="tiny-random", training_file=str(stored))
    assert err.value.body["param"] == "training_file" and "file you uploaded" in err.value.message


def test_another_owners_job_is_404_on_every_route_and_keeps_running(clients, tenancy_stack):
    alice, alice2, bob, admin = (clients[k] for k in ("alice", "alice2", "bob", "admin"))
    f = alice.files.create(file=("alice.jsonl", jsonl(CHAT)), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, suffix="tenant",
                                        hyperparameters={"steps": 100000, "batch_size": 2})
    assert job.organization_id == "org-team-a"

    _not_found(bob.fine_tuning.jobs.retrieve, job.id)
    _not_found(bob.fine_tuning.jobs.cancel, job.id)
    _not_found(bob.fine_tuning.jobs.list_events, job.id)
    _not_found(bob.fine_tuning.jobs.checkpoints.list, job.id)
    streamed = httpx.get(f"{tenancy_stack.cfg.base_url}/fine_tuning/jobs/{job.id}/events",
                         params={"stream": "true"}, headers={"Authorization": f"Bearer {bob.api_key}"}, timeout=30)
    assert streamed.status_code == 404, streamed.text
    assert job.id not in [j.id for j in bob.fine_tuning.jobs.list()]

    deadline = time.monotonic() + 120  # unharmed: it trains on
    while not any(e.type == "metrics" for e in alice.fine_tuning.jobs.list_events(job.id, limit=100).data):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "running"
    assert job.id in [j.id for j in admin.fine_tuning.jobs.list()]
    alice2.fine_tuning.jobs.cancel(job.id)  # the same owner may
    deadline = time.monotonic() + 120
    while (status := alice.fine_tuning.jobs.retrieve(job.id).status) != "cancelled":
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


async def test_the_trainer_refuses_calls_without_a_valid_internal_identity(tenancy_stack):
    stack = tenancy_stack
    secret = stack.internal_secret()
    channel = stack.channel(stack.cfg.trainer_port)
    stub = trainer_pb2_grpc.TrainerStub(channel)
    try:
        forged = IdentityCodec("not-the-deployment-secret").metadata(Identity(owner="team-a", admin=True))
        expired = IdentityCodec(secret).metadata(Identity(owner="team-a"), now=time.time() - 7200)
        for metadata in ((), forged, expired):
            for call in (stub.ListFiles(pb.ListFilesRequest(), metadata=metadata),
                         stub.ListJobs(pb.ListJobsRequest(), metadata=metadata)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = IdentityCodec(secret).metadata(Identity(owner="team-nobody"))
        assert list((await stub.ListFiles(pb.ListFilesRequest(), metadata=good)).files) == []
    finally:
        await channel.close()


def test_an_owner_may_have_only_so_many_jobs_active_and_ask_only_so_much(clients):
    """Fair use (this stack allows 2 active jobs per owner): a third is a 429 ``too_many_active_jobs`` until one
    ends; steps or pods past the service's caps are a 400 naming the parameter."""
    carol = clients["carol"]
    f = carol.files.create(file=("carol.jsonl", jsonl(CHAT)), purpose="fine-tune")
    big = {"steps": 100000, "batch_size": 2}
    with pytest.raises(openai.BadRequestError) as err:
        carol.fine_tuning.jobs.create(model="tiny-random", training_file=f.id,
                                      hyperparameters={"steps": 10_000_000, "batch_size": 2})
    assert err.value.body["param"] == "hyperparameters"
    with pytest.raises(openai.BadRequestError) as err:
        carol.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, hyperparameters=big,
                                      extra_body={"resources": {"nodes": 64}})
    assert err.value.body["param"] in ("resources.nodes", "resources")
    jobs = [carol.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, hyperparameters=big)
            for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as err:
        carol.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, hyperparameters=big)
    assert err.value.status_code == 429 and err.value.body["code"] == "too_many_active_jobs"
    carol.fine_tuning.jobs.cancel(jobs[0].id)
    deadline = time.monotonic() + 60
    while carol.fine_tuning.jobs.retrieve(jobs[0].id).status != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    third = carol.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, hyperparameters=big)
    for job in (jobs[1], third):
        carol.fine_tuning.jobs.cancel(job.id)
