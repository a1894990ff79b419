"""The embedded default: SQLite file + in-process limiter, no PostgreSQL and no Redis (``llmsvc up``)."""

from __future__ import annotations

from services.common.db.engine import sqlite_url
from services.common.db.migrate import upgrade
from services.common.pb import auth_pb2 as pb

from .conftest import auth_server, create_key


async def test_sqlite_and_in_process_limits_end_to_end(tmp_path, admin_secret):
    url = sqlite_url(tmp_path / "llmsvc.db")
    upgrade(url)
    async with auth_server(tmp_path, url, admin_secret) as a:
        key = await create_key(a.admin, a.admin_md, name="embedded", rpm=3, tpm=1000, allowed_models=["m"])
        got = [await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, model="m", reserve_tokens=100,
                                                  request_id=f"e{i}")) for i in range(4)]
        assert [r.decision for r in got] == [pb.DECISION_ALLOWED] * 3 + [pb.DECISION_RATE_LIMITED]
        assert all(r.reservation_id.startswith("m.") for r in got[:3])
        for i, r in enumerate(got[:3]):
            rep = await a.auth.ReportUsage(pb.ReportUsageRequest(
                reservation_id=r.reservation_id, request_id=f"e{i}", key_id=r.key_id, model="m", prompt_tokens=10,
                completion_tokens=i, status="ok"))
            assert rep.outcome == "written"
        again = await a.auth.ReportUsage(pb.ReportUsageRequest(
            reservation_id=got[0].reservation_id, request_id="e0", key_id=got[0].key_id, model="m",
            prompt_tokens=10, completion_tokens=0, status="ok"))
        assert again.outcome == "duplicate"
        usage = await a.admin.GetKeyUsage(pb.GetKeyUsageRequest(key_id=key.key.id), metadata=a.admin_md)
        assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (3, 30, 3)
        assert [(b.model, b.requests) for b in usage.buckets] == [("m", 3)]
        forbidden = await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, model="other", reserve_tokens=1))
        assert forbidden.decision == pb.DECISION_FORBIDDEN and forbidden.code == "model_not_allowed"


async def test_retention_deletes_only_old_usage(tmp_path, admin_secret):
    from datetime import timedelta

    from services.auth.store import UsageRow
    from services.common.db.base import utcnow

    url = sqlite_url(tmp_path / "retention.db")
    upgrade(url)
    async with auth_server(tmp_path, url, admin_secret) as a:
        store = a.runtime.store
        now = utcnow()
        rows = [UsageRow(f"res-{i}", f"req-{i}", "bootstrap", "m", 1, 1, "ok", 0.1, now - timedelta(days=d))
                for i, d in enumerate([0, 1, 89, 91, 200])]
        assert len(await store.insert_usage(rows)) == 5
        assert await store.purge_usage(timedelta(days=90), batch=1) == 2
        buckets = await store.usage_summary("bootstrap", now - timedelta(days=365))
        assert sum(b.requests for b in buckets) == 3

