"""Redis blocked in the middle of a load run: the configured policy holds, loudly, and no usage is lost.

Redis is cut off from the auth replica by a TCP proxy this test controls
(connections dropped, new ones held silent, like a firewall DROP), so the
shared Redis keeps serving everyone else on this machine.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.common.db.auth_tables import UsageRecord
from services.common.pb import auth_pb2 as pb

from .conftest import REDIS_URL, auth_server, create_key
from .load import Load
from .proxy import TcpProxy


def degraded(policy: str) -> float:
    return REGISTRY.get_sample_value("llmsvc_auth_limiter_degraded", {"policy": policy})


async def usage_rows(store, key_id: str) -> tuple[int, int]:
    async with store.sessions() as s:
        n, tokens = (await s.execute(
            select(func.count(), func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens))
            .where(UsageRecord.key_id == key_id))).one()
    return n, int(tokens or 0)


async def run_outage(tmp_path, auth_db, admin_secret, redis_prefix, policy: str, caplog, rpm: int = 100_000):
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname, target.port).start()
    url = f"redis://127.0.0.1:{proxy.port}{target.path}"
    caplog.set_level(logging.WARNING, logger="services.auth.guard")
    async with auth_server(tmp_path, auth_db, admin_secret, redis_url=url, redis_prefix=redis_prefix,
                           redis_failure_policy=policy, redis_timeout_s=1.0, redis_retry_s=0.2) as a:
        key = await create_key(a.admin, a.admin_md, name=f"redis-outage-{policy}", rpm=rpm, tpm=10**9)
        load, stop = Load(a.auth, key.secret), asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        try:
            await load.until("before", 20)
            proxy.block()
            load.phase = "outage"
            await load.until("outage", 20)
            during = degraded(policy)
            proxy.unblock()
            load.phase = "after"
            # Redis is retried every redis_retry_s; wait for it to be used again, then for a steady run.
            await load.until("after", 1, backend="r")
            load.phase = "recovered"
            await load.until("recovered", 20)
        finally:
            stop.set()
            await runner
            await proxy.close()
        return a, key, load, during


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_redis_outage_policy_holds_and_recovers(tmp_path, auth_db, admin_secret, redis_prefix, caplog, policy):
    a, key, load, during = await run_outage(tmp_path, auth_db, admin_secret, redis_prefix, policy, caplog)
    assert {c.decision for c in load.in_phase("before")} == {pb.DECISION_ALLOWED}
    outage = load.in_phase("outage")
    if policy == "closed":
        assert {(c.decision, c.code) for c in outage} == {(pb.DECISION_UNAVAILABLE, "rate_limiter_unavailable")}
    else:
        assert {c.decision for c in outage} == {pb.DECISION_ALLOWED}
    # Loud either way: a gauge while it lasts, a log line on each transition.
    assert during == 1 and degraded(policy) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("rate-limit backend unavailable" in m and f"policy={policy}" in m for m in messages)
    assert any("rate-limit backend is back" in m for m in messages)
    # Shared limits again once Redis answers; during the outage, only the in-process limiter (if open).
    assert {(c.decision, c.backend) for c in load.in_phase("recovered")} == {(pb.DECISION_ALLOWED, "r")}
    assert {c.backend for c in outage} == ({""} if policy == "closed" else {"m"})
    # Every admitted call's usage is in the database, exactly once.
    admitted = [c for c in load.calls if c.decision == pb.DECISION_ALLOWED]
    assert {c.reported for c in admitted} == {"written"}
    assert await usage_rows(a.runtime.store, key.key.id) == (len(admitted), sum(c.tokens for c in admitted))


async def test_fail_open_still_limits_per_replica(tmp_path, auth_db, admin_secret, redis_prefix):
    """Open is not unlimited: the in-process limiter applies the key's limits on this replica."""
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname, target.port).start()
    url = f"redis://127.0.0.1:{proxy.port}{target.path}"
    try:
        async with auth_server(tmp_path, auth_db, admin_secret, redis_url=url, redis_prefix=redis_prefix,
                               redis_failure_policy="open", redis_timeout_s=1.0, redis_retry_s=60) as a:
            key = await create_key(a.admin, a.admin_md, name="open-local", rpm=5, tpm=10**6)
            proxy.block()
            got = [await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=1)) for _ in range(7)]
            assert [r.decision for r in got] == [pb.DECISION_ALLOWED] * 5 + [pb.DECISION_RATE_LIMITED] * 2
            assert all(r.reservation_id.startswith("m.") for r in got[:5])
    finally:
        await proxy.close()


async def test_settlements_missed_during_an_outage_free_the_slots_when_redis_returns(tmp_path, auth_db,
                                                                                    admin_secret, redis_prefix):
    """A key with max_concurrent=2 holds both slots when Redis goes away; its two requests end during the
    outage, so their settlements cannot reach Redis. Before, those slots stayed taken until the 15-minute
    lease ran out. Now the settlements wait in auth and are replayed when Redis answers: the key's first two
    admissions after the outage both succeed, and a third is refused by the concurrency limit."""
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname, target.port).start()
    url = f"redis://127.0.0.1:{proxy.port}{target.path}"
    try:
        async with auth_server(tmp_path, auth_db, admin_secret, redis_url=url, redis_prefix=redis_prefix,
                               redis_failure_policy="closed", redis_timeout_s=1.0, redis_retry_s=0.2) as a:
            key = await create_key(a.admin, a.admin_md, name="settle-replay", rpm=10**6, tpm=10**9,
                                   max_concurrent=2)
            held = [await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=10)) for _ in range(2)]
            assert [h.decision for h in held] == [pb.DECISION_ALLOWED] * 2
            third = await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=10))
            assert third.code == "concurrency_limit"
            proxy.block()
            for i, h in enumerate(held):  # the requests end while Redis is unreachable
                await a.auth.ReportUsage(pb.ReportUsageRequest(reservation_id=h.reservation_id, request_id=f"s{i}",
                                                               key_id=h.key_id, model="m", prompt_tokens=1,
                                                               completion_tokens=1, status="ok"))
            assert len(a.runtime.gate.limiter.pending) == 2
            assert REGISTRY.get_sample_value("llmsvc_auth_settles_pending") == 2
            proxy.unblock()
            after = []
            deadline = asyncio.get_running_loop().time() + 30
            while len(after) < 2:  # the first tries may still meet the outage policy (503), never the limit
                r = await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=10))
                assert r.code != "concurrency_limit", "a missed settlement still holds a slot"
                if r.decision == pb.DECISION_ALLOWED:
                    after.append(r)
                else:
                    assert r.decision == pb.DECISION_UNAVAILABLE
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
            assert (await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=10))).code \
                == "concurrency_limit"
            assert not a.runtime.gate.limiter.pending
            assert REGISTRY.get_sample_value("llmsvc_auth_settles_pending") == 0
    finally:
        await proxy.close()
