"""The usage ledger writer on PostgreSQL: group commit, idempotency."""

from __future__ import annotations

import asyncio

from services.auth.store import Store, UsageRow
from services.auth.usage import UsageRecorder
from services.common.db.base import utcnow
from services.common.db.engine import make_engine


async def test_group_commit_writes_concurrent_reports_once_in_few_batches(tmp_path, auth_db):
    """200 concurrent records, some repeated: each written exactly once, in far fewer INSERTs than records."""
    store = Store(make_engine(auth_db))
    calls = []
    real_insert = store.insert_usage

    async def counting_insert(rows):
        calls.append(len(rows))
        return await real_insert(rows)

    store.insert_usage = counting_insert
    recorder = UsageRecorder(store, tmp_path / "spool", "group")
    key = f"group-{tmp_path.name}"[:36]
    rows = [UsageRow(f"{key}-{i % 150}", f"q{i}", key, "m", 1, i % 150, "ok", 0.0, utcnow()) for i in range(200)]
    try:
        outcomes = await asyncio.gather(*(recorder.record(r) for r in rows))
        assert outcomes.count("written") == 150 and outcomes.count("duplicate") == 50
        assert sum(calls) == 200 and len(calls) < 20
        assert len(await real_insert(rows)) == 0  # all present already
    finally:
        await store.engine.dispose()
