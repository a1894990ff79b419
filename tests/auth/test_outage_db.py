"""PostgreSQL blocked in the middle of a load run.

Stated behaviour: keys verified within ``key_cache_stale_s`` keep working from
the cache; keys this replica cannot verify are refused (503, retry later);
usage records are spooled to an fsynced local file and written, exactly once,
when the database is back, also by a restarted replica.
"""

from __future__ import annotations

import asyncio
import shutil

from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.common.db.auth_tables import UsageRecord
from services.common.pb import auth_pb2 as pb

from .conftest import auth_server, create_key
from .load import Load
from .proxy import TcpProxy

PG_PORT = 5432


def via(proxy: TcpProxy, url: str) -> str:
    return url.replace(f"127.0.0.1:{PG_PORT}/", f"127.0.0.1:{proxy.port}/")


async def usage_of(store, key_id: str) -> tuple[int, int, int]:
    async with store.sessions() as s:
        n, distinct, tokens = (await s.execute(
            select(func.count(), func.count(func.distinct(UsageRecord.reservation_id)),
                   func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens))
            .where(UsageRecord.key_id == key_id))).one()
    return n, distinct, int(tokens or 0)


async def wait_for_rows(store, key_id: str, n: int, timeout_s: float = 30.0) -> None:
    async def done() -> None:
        while (await usage_of(store, key_id))[0] < n:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(done(), timeout_s)


async def spool_drained(recorder) -> None:
    while recorder.spool.exists() or recorder.replaying.exists():
        await asyncio.sleep(0.05)


async def test_db_outage_serves_known_keys_refuses_unknown_and_loses_no_usage(tmp_path, auth_db, admin_secret):
    proxy = await TcpProxy("127.0.0.1", PG_PORT).start()
    try:
        async with auth_server(tmp_path, auth_db, admin_secret) as direct, \
                auth_server(tmp_path / "cut", via(proxy, auth_db), admin_secret, key_cache_ttl_s=0.2,
                            db_timeout_s=1.5) as a:
            known = await create_key(direct.admin, direct.admin_md, name="db-outage-known", rpm=100_000, tpm=10**9)
            unseen = await create_key(direct.admin, direct.admin_md, name="db-outage-unseen")
            load, stop = Load(a.auth, known.secret), asyncio.Event()
            runner = asyncio.create_task(load.run(stop))
            try:
                await load.until("before", 20)
                stale_before = REGISTRY.get_sample_value("llmsvc_auth_key_cache_total", {"outcome": "stale"}) or 0
                proxy.block()
                load.phase = "outage"
                await load.until("outage", 30)  # > ttl: the cached entry is stale and still serves
                unseen_during = await a.auth.Admit(pb.AdmitRequest(api_key=unseen.secret, reserve_tokens=1))
                wrong_during = await a.auth.Admit(pb.AdmitRequest(api_key=known.secret[:-3] + "xyz"))
                stale_served = REGISTRY.get_sample_value("llmsvc_auth_key_cache_total", {"outcome": "stale"})
                proxy.unblock()
                load.phase = "after"
                await load.until("after", 20)
            finally:
                stop.set()
                await runner
            outage = load.in_phase("outage")
            assert {c.decision for c in outage} == {pb.DECISION_ALLOWED}
            assert {c.reported for c in outage} == {"spooled"}
            assert stale_served > stale_before  # the cache entry outlived its TTL and still served
            assert unseen_during.decision == pb.DECISION_UNAVAILABLE and unseen_during.code == "auth_unavailable"
            # A wrong secret on a cached prefix is still a 401: the hash is compared against the cached record.
            assert wrong_during.decision == pb.DECISION_UNAUTHENTICATED
            admitted = [c for c in load.calls if c.decision == pb.DECISION_ALLOWED]
            await wait_for_rows(direct.runtime.store, known.key.id, len(admitted))
            assert await usage_of(direct.runtime.store, known.key.id) == (
                len(admitted), len(admitted), sum(c.tokens for c in admitted))
            assert not a.runtime.gate.recorder.spool.exists() and not a.runtime.gate.recorder.replaying.exists()
    finally:
        await proxy.close()


async def test_spooled_usage_survives_a_restart_and_replays_exactly_once(tmp_path, auth_db, admin_secret):
    proxy = await TcpProxy("127.0.0.1", PG_PORT).start()
    replica = {"replica_id": "restart-me", "spool_dir": tmp_path / "spool", "db_timeout_s": 1.5}
    try:
        # Its own spool folder: a live replica on the same one would adopt restart-me's spool (next test).
        async with auth_server(tmp_path, auth_db, admin_secret, spool_dir=tmp_path / "direct-spool") as direct:
            key = await create_key(direct.admin, direct.admin_md, name="db-restart")
            async with auth_server(tmp_path, via(proxy, auth_db), admin_secret, **replica) as a:
                admitted = [await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=5))
                            for _ in range(10)]
                proxy.block()
                outcomes = [(await a.auth.ReportUsage(pb.ReportUsageRequest(
                    reservation_id=r.reservation_id, request_id=f"q{i}", key_id=r.key_id, model="m",
                    prompt_tokens=2, completion_tokens=i, status="ok"))).outcome for i, r in enumerate(admitted)]
                assert set(outcomes) == {"spooled"}
            # The replica is gone with its records only on disk; keep a copy to replay a second time.
            shutil.copy(tmp_path / "spool" / "usage-restart-me.jsonl", tmp_path / "copy.jsonl")
            proxy.unblock()
            async with auth_server(tmp_path, via(proxy, auth_db), admin_secret, **replica):
                await wait_for_rows(direct.runtime.store, key.key.id, 10)
            shutil.copy(tmp_path / "copy.jsonl", tmp_path / "spool" / "usage-restart-me.jsonl")
            duplicates = REGISTRY.get_sample_value("llmsvc_auth_usage_records_total", {"outcome": "duplicate"}) or 0
            async with auth_server(tmp_path, auth_db, admin_secret, **replica) as again:
                await asyncio.wait_for(spool_drained(again.runtime.gate.recorder), 30)
            assert REGISTRY.get_sample_value("llmsvc_auth_usage_records_total",
                                             {"outcome": "duplicate"}) - duplicates == 10
            assert await usage_of(direct.runtime.store, key.key.id) == (10, 10, 10 * 2 + sum(range(10)))
    finally:
        await proxy.close()


async def test_a_gone_replicas_spool_is_adopted_by_a_live_one_on_the_shared_volume(tmp_path, auth_db, admin_secret):
    """The chart keeps the spool on a volume the replicas share. A replica that spooled records and never
    came back (a Deployment's pods get new names) leaves its files unlocked; a live replica adopts them as
    soon as the database answers, writes each record once, and removes them. A live replica's spool is left
    to its owner."""
    proxy = await TcpProxy("127.0.0.1", PG_PORT).start()
    shared = tmp_path / "shared-spool"
    try:
        async with auth_server(tmp_path, auth_db, admin_secret, spool_dir=tmp_path / "direct-spool") as direct:
            key = await create_key(direct.admin, direct.admin_md, name="adopt")
            async with auth_server(tmp_path, via(proxy, auth_db), admin_secret, replica_id="gone",
                                   spool_dir=shared, db_timeout_s=1.5) as gone:
                admitted = [await gone.auth.Admit(pb.AdmitRequest(api_key=key.secret, reserve_tokens=5))
                            for _ in range(6)]
                proxy.block()
                outcomes = [(await gone.auth.ReportUsage(pb.ReportUsageRequest(
                    reservation_id=r.reservation_id, request_id=f"a{i}", key_id=r.key_id, model="m",
                    prompt_tokens=1, completion_tokens=i, status="ok"))).outcome for i, r in enumerate(admitted)]
                assert set(outcomes) == {"spooled"}
                async with auth_server(tmp_path, auth_db, admin_secret, replica_id="heir", spool_dir=shared) as heir:
                    assert heir.runtime.gate.recorder.orphans() == ["gone"]
                    assert await heir.runtime.gate.recorder.adopt_orphans() == 0  # alive: its lock is held
                    assert (shared / "usage-gone.jsonl").exists()
            # gone has exited for good, its records only on the shared volume
            async with auth_server(tmp_path, auth_db, admin_secret, replica_id="heir", spool_dir=shared):
                await wait_for_rows(direct.runtime.store, key.key.id, 6)
                deadline = asyncio.get_running_loop().time() + 30
                while (shared / "usage-gone.jsonl").exists():
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
            assert await usage_of(direct.runtime.store, key.key.id) == (6, 6, 6 + sum(range(6)))
    finally:
        await proxy.close()
