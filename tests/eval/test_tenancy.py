"""Eval runs belong to the owner (team) of the key that made them: another owner gets 404 on each route,
as for a run that never was, and cannot cancel it; a key of the same owner and an ``admin`` key see it.
Behind the gateway the eval service acts only on an identity signed with the deployment's internal secret,
so a pod that can reach its port cannot force a promotion or roll an alias back."""

from __future__ import annotations

import grpc
import httpx
import pytest

from services.common.identity import Identity, IdentityCodec
from services.common.pb import eval_pb2 as pb
from services.common.pb import eval_pb2_grpc

from .conftest import wait_run


@pytest.fixture(scope="module")
def tenants(eval_stack, gw) -> dict[str, httpx.Client]:
    c = eval_stack.cfg
    out = {}
    for name, owner in (("alice", "team-a"), ("alice2", "team-a"), ("bob", "team-b")):
        r = gw.post("/v1/admin/keys", json={"name": name, "owner": owner, "scopes": ["chat", "eval"]})
        assert r.status_code == 201, r.text
        out[name] = httpx.Client(base_url=f"http://{c.host}:{c.gateway_port}", timeout=300,
                                 headers={"Authorization": f"Bearer {r.json()['key']}"})
    yield out
    for client in out.values():
        client.close()


def test_another_owners_eval_run_is_404_and_runs_on(tenants, gw, lifecycle):
    alice, alice2, bob = tenants["alice"], tenants["alice2"], tenants["bob"]
    r = alice.post("/v1/evals", json={"model": lifecycle["v1"], "suite": "perplexity",
                                      "params": {"dataset": "heldout.txt", "limit": 2}})
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]

    assert bob.get(f"/v1/evals/{run_id}").status_code == 404
    assert bob.post(f"/v1/evals/{run_id}/cancel").status_code == 404
    assert run_id not in [x["id"] for x in bob.get("/v1/evals", params={"model": lifecycle["v1"]}).json()["data"]]

    done = wait_run(alice, run_id)
    assert done["status"] == "succeeded" and done["metrics"]  # bob's cancel did nothing
    assert alice2.get(f"/v1/evals/{run_id}").json()["id"] == run_id
    assert run_id in [x["id"] for x in alice2.get("/v1/evals").json()["data"]]
    assert run_id in [x["id"] for x in gw.get("/v1/evals").json()["data"]]  # the admin key


async def test_the_eval_service_refuses_calls_without_a_valid_internal_identity(eval_stack, lifecycle):
    stack = eval_stack
    channel = stack.channel(stack.cfg.eval_port)
    stub = eval_pb2_grpc.EvalStub(channel)
    try:
        forged = IdentityCodec("not-the-deployment-secret").metadata(Identity(owner="x", admin=True))
        for metadata in ((), forged):
            for call in (stub.Promote(pb.PromoteRequest(alias=lifecycle["alias"], version=lifecycle["garbage"],
                                                        force=True, actor="pod"), metadata=metadata),
                         stub.Rollback(pb.RollbackRequest(alias=lifecycle["alias"], actor="pod"), metadata=metadata),
                         stub.ListRuns(pb.ListRunsRequest(), metadata=metadata)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # signed, but not an admin: forcing is refused by the service itself, whatever the gateway checked
        user = IdentityCodec(stack.internal_secret()).metadata(Identity(owner="team-a", key_id="k"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Promote(pb.PromoteRequest(alias=lifecycle["alias"], version=lifecycle["garbage"], force=True),
                               metadata=user)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Rollback(pb.RollbackRequest(alias=lifecycle["alias"]), metadata=user)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()


def test_an_owner_may_have_only_so_many_runs_active(tenants, lifecycle):
    """This stack allows one queued or running run per owner (admin keys are not bound): a second is a 429
    ``too_many_active_runs`` while the first runs, and is accepted once it has ended."""
    bob = tenants["bob"]
    slow = {"model": lifecycle["v1"], "suite": "perplexity", "params": {"dataset": "heldout.txt", "window": 8,
                                                                        "stride": 1}}
    first = bob.post("/v1/evals", json=slow)
    assert first.status_code == 200, first.text
    second = bob.post("/v1/evals", json=slow)
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_active_runs", second.text
    assert bob.post(f"/v1/evals/{first.json()['id']}/cancel").status_code == 200
    again = bob.post("/v1/evals", json={**slow, "params": {"dataset": "heldout.txt", "limit": 1}})
    assert again.status_code == 200, again.text
    wait_run(bob, again.json()["id"])


def test_a_key_moves_only_its_owners_aliases_to_its_owners_versions(tenants, lifecycle, eval_models, eval_pg_url):
    """Promotion without ``force`` is for the alias's owner: another owner's key gets 403 on a shared or
    foreign alias, and 404 for a version it may not see (as for one that does not exist); nothing moves."""
    import asyncio
    import uuid

    from services.common.db import registry
    from services.common.db.engine import make_engine, session_factory

    name = f"own{uuid.uuid4().hex[:6]}"

    async def setup() -> tuple[str, str]:
        engine = make_engine(eval_pg_url)
        try:
            async with session_factory(engine)() as s:
                row = await registry.register_version(s, name, str(eval_models["v1"]), owner="team-a")
                await registry.set_alias(s, f"{name}-prod", row.id, actor="test", action="create")
                return row.id, f"{name}-prod"
        finally:
            await engine.dispose()

    version, alias = asyncio.run(setup())
    bob = tenants["bob"]
    shared = bob.post(f"/v1/models/{lifecycle['alias']}/promote", json={"version": lifecycle["v3"]})
    assert shared.status_code == 403 and shared.json()["error"]["code"] == "permission_denied", shared.text
    foreign = bob.post(f"/v1/models/{alias}/promote", json={"version": version})
    assert foreign.status_code == 404, foreign.text
    hidden = tenants["alice"].post(f"/v1/models/{alias}/promote", json={"version": lifecycle["garbage"] + "-nope"})
    assert hidden.status_code == 404, hidden.text

    async def alias_target() -> str:
        engine = make_engine(eval_pg_url)
        try:
            async with session_factory(engine)() as s:
                return (await s.get(registry.ModelAlias, alias)).version_id
        finally:
            await engine.dispose()

    assert asyncio.run(alias_target()) == version
