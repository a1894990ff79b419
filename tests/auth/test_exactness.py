"""Limits are exact across replicas: 3 auth processes, 50 concurrent clients, one key, one Redis.

Each replica is ``python -m services.auth.main`` on PostgreSQL + Redis, as deployed.
Clients spread over the replicas; every decision comes back over real gRPC.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from services.common.grpcutil import insecure_channel
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .conftest import REDIS_URL, auth_processes, create_key, purge_redis

CLIENTS = 50
# Redis answers retry-after in whole milliseconds, truncated: allow one.
MS = 0.001


@pytest.fixture(scope="module")
async def replicas(tmp_path_factory, auth_db, admin_secret):
    tmp = tmp_path_factory.mktemp("replicas")
    prefix = f"llmsvc-test:{tmp.name}:"
    env = {"LLMSVC_DATABASE_URL": auth_db, "LLMSVC_REDIS_URL": REDIS_URL, "LLMSVC_AUTH_API_KEY": admin_secret,
           "LLMSVC_AUTH_REDIS_PREFIX": prefix}
    async with auth_processes(tmp, 3, env, metrics=True) as procs:
        channels = [insecure_channel(p.address) for p in procs]
        yield [auth_pb2_grpc.AuthStub(c) for c in channels], auth_pb2_grpc.AuthAdminStub(channels[0]), procs
        for c in channels:
            await c.close()
    purge_redis(prefix)


async def burst(stubs, secret: str, per_client: int, reserve: int) -> tuple[list[pb.AdmitResponse], float, float]:
    """CLIENTS concurrent clients, client i on replica i % 3, each sending ``per_client`` Admits in a row."""
    async def client(i: int) -> list[pb.AdmitResponse]:
        stub = stubs[i % len(stubs)]
        return [await stub.Admit(pb.AdmitRequest(api_key=secret, request_id=f"c{i}-{j}", model="m", scope="chat",
                                                 reserve_tokens=reserve), timeout=30)
                for j in range(per_client)]

    start = time.time()
    results = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    return [r for rs in results for r in rs], start, time.time()


def split(responses):
    allowed = [r for r in responses if r.decision == pb.DECISION_ALLOWED]
    limited = [r for r in responses if r.decision == pb.DECISION_RATE_LIMITED]
    assert len(allowed) + len(limited) == len(responses)
    return allowed, limited


def scrape(procs, name: str, outcome: str) -> float:
    """Sum of one labelled counter over every replica's /metrics."""
    total = 0.0
    for p in procs:
        for line in httpx.get(p.metrics_url, timeout=10).text.splitlines():
            if line.startswith(f'{name}{{outcome="{outcome}"}} '):
                total += float(line.split()[-1])
    return total


async def test_rpm_100_admits_exactly_100_across_three_replicas(replicas, admin_secret):
    stubs, admin, procs = replicas
    md = (("authorization", f"Bearer {admin_secret}"),)
    key = await create_key(admin, md, name="rpm-exact", rpm=100, tpm=10**9)
    counted = {o: scrape(procs, "llmsvc_auth_decisions_total", o) for o in ("allowed", "rate_limited")}
    limited_by_rpm = scrape(procs, "llmsvc_auth_rate_limited_total", "rate_limit_requests")
    responses, start, end = await burst(stubs, key.secret, per_client=4, reserve=1)
    allowed, limited = split(responses)
    assert len(allowed) == 100 and len(limited) == 100
    # Atomic: every admission saw a distinct count.
    assert sorted(r.rate_limit.remaining_requests for r in allowed) == list(range(100))
    assert {r.code for r in limited} == {"rate_limit_requests"}
    # The window's first admission happened after `start`; each refusal before `end`. So the true wait is
    # within [60 - (end - start), 60], not the whole window every time.
    for r in limited:
        assert 60 - (end - start) - MS <= r.retry_after_s <= 60
        assert r.rate_limit.limit_requests == 100 and r.rate_limit.remaining_requests == 0
    # Nothing is left: another replica refuses too.
    again = await stubs[2].Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=1))
    assert again.decision == pb.DECISION_RATE_LIMITED
    # The replicas' metrics add up to the same decisions.
    assert scrape(procs, "llmsvc_auth_decisions_total", "allowed") - counted["allowed"] == 100
    assert scrape(procs, "llmsvc_auth_decisions_total", "rate_limited") - counted["rate_limited"] == 101
    assert scrape(procs, "llmsvc_auth_rate_limited_total", "rate_limit_requests") - limited_by_rpm == 101


async def test_tpm_is_exact_and_reconciles_to_actual_usage(replicas, admin_secret):
    stubs, admin, _ = replicas
    md = (("authorization", f"Bearer {admin_secret}"),)
    key = await create_key(admin, md, name="tpm-exact", rpm=100_000, tpm=1000)
    responses, start, end = await burst(stubs, key.secret, per_client=2, reserve=30)
    allowed, limited = split(responses)
    assert len(allowed) == 1000 // 30 == 33
    assert sorted(r.rate_limit.remaining_tokens for r in allowed) == [1000 - 30 * k for k in range(1, 34)][::-1]
    assert {r.code for r in limited} == {"rate_limit_tokens"}
    assert all(60 - (end - start) - MS <= r.retry_after_s <= 60 for r in limited)

    # Each used 10 tokens (4 prompt + 6 completion); reports land on whichever replica.
    await asyncio.gather(*(stubs[i % 3].ReportUsage(pb.ReportUsageRequest(
        reservation_id=r.reservation_id, request_id=f"rep{i}", key_id=r.key_id, model="m", prompt_tokens=4,
        completion_tokens=6, status="ok")) for i, r in enumerate(allowed)))
    # 330 used, 670 free: exactly 22 more reservations of 30.
    responses, _, _ = await burst(stubs, key.secret, per_client=1, reserve=30)
    allowed2, _ = split(responses)
    assert len(allowed2) == 670 // 30 == 22

    # A cancelled request releases all it did not use.
    await stubs[1].ReportUsage(pb.ReportUsageRequest(reservation_id=allowed2[0].reservation_id,
                                                     key_id=allowed2[0].key_id, request_id="x", model="m",
                                                     prompt_tokens=0, completion_tokens=0, status="cancelled"))
    assert (await stubs[2].Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=30))).decision == \
        pb.DECISION_ALLOWED


async def test_max_concurrent_is_exact_across_replicas(replicas, admin_secret):
    stubs, admin, _ = replicas
    md = (("authorization", f"Bearer {admin_secret}"),)
    key = await create_key(admin, md, name="conc-exact", rpm=100_000, tpm=10**9, max_concurrent=5)
    responses, _, _ = await burst(stubs, key.secret, per_client=1, reserve=10)
    allowed, limited = split(responses)
    assert len(allowed) == 5 and {r.code for r in limited} == {"concurrency_limit"}
    r = allowed[0]
    await stubs[2].ReportUsage(pb.ReportUsageRequest(reservation_id=r.reservation_id, key_id=r.key_id,
                                                     request_id="done", model="m", prompt_tokens=3,
                                                     completion_tokens=3, status="ok"))
    responses, _, _ = await burst(stubs, key.secret, per_client=1, reserve=10)
    assert len(split(responses)[0]) == 1
