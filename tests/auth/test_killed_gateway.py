"""SIGKILL a gateway during load: every request that completed has its usage row in PostgreSQL, exactly once
(real stack: gateway, auth on PostgreSQL and Redis, router, a vLLM worker).

Six streamed chats from one key finish while auth is stopped (SIGSTOP), so the gateway cannot hand their
usage on; four more are still streaming when the gateway is killed. Before the journal, the six reports
died with the process. Now each was on disk before it was queued: the restarted gateway finds the dead
one's journal and sends them, and PostgreSQL holds one usage row per completed request. The four cut off
never completed (their clients saw the connection drop), and have none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
from sqlalchemy import func, select

from services.common.db.auth_tables import UsageRecord
from services.common.db.engine import make_engine, session_factory
from tests.router.load import client_for, stream_chat


def _rows(db_url: str, key_id: str) -> int:
    async def count() -> int:
        engine = make_engine(db_url)
        try:
            async with session_factory(engine)() as s:
                return int(await s.scalar(select(func.count()).select_from(UsageRecord)
                                          .where(UsageRecord.key_id == key_id)))
        finally:
            await engine.dispose()

    return asyncio.run(count())


def test_completed_requests_equal_usage_rows_after_a_gateway_is_killed_under_load(pg_stack, admin_secret,
                                                                                   auth_db):
    stack = pg_stack
    model = stack.cfg.served_model_name or stack.cfg.model.name
    created = httpx.post(f"{stack.cfg.base_url}/admin/keys", json={"name": "killed-gateway", "owner": "journal"},
                         headers={"Authorization": f"Bearer {admin_secret}"}, timeout=30)
    assert created.status_code == 201, created.text
    key = created.json()
    auth_pid = stack.procs["auth"].popen.pid
    journal = stack.cfg.home / "gateway-usage"

    async def load() -> tuple[list, list]:
        async with client_for(stack.cfg.base_url, key["key"]) as client:
            short_started = [asyncio.Event() for _ in range(6)]
            long_started = [asyncio.Event() for _ in range(4)]
            short = [asyncio.create_task(stream_chat(client, model, f"Count to {i + 20}.", 24, short_started[i],
                                                     ignore_eos=True)) for i in range(6)]
            long = [asyncio.create_task(stream_chat(client, model, f"Tell a story {i}.", 600, long_started[i],
                                                    ignore_eos=True)) for i in range(4)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in short_started + long_started)), 120)
            os.kill(auth_pid, signal.SIGSTOP)  # every request is admitted; none can be reported now
            done = await asyncio.gather(*short)
            deadline = time.monotonic() + 10
            while sum(p.stat().st_size for p in journal.glob("usage-*.log")) == 0:
                assert time.monotonic() < deadline, "the reports never reached the journal"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(stack.stop_proc, "gateway", signal.SIGKILL)  # the long ones still stream
            cut = await asyncio.gather(*long, return_exceptions=True)
            return done, cut

    try:
        done, cut = asyncio.run(load())
    finally:
        os.kill(auth_pid, signal.SIGCONT)
        if stack.procs["gateway"].popen.poll() is not None:
            stack.spawn("gateway", "services.gateway.main", stack.env_for("gateway"))
            stack.wait_ready()
    assert all(r.status == 200 and r.done and r.error is None for r in done), done
    assert not any(getattr(r, "done", False) for r in cut), "a long stream completed before the kill"

    deadline = time.monotonic() + 60
    while (n := _rows(auth_db, key["id"])) < len(done):
        assert time.monotonic() < deadline, f"{n} usage rows for {len(done)} completed requests"
        time.sleep(0.5)
    time.sleep(1.0)
    assert _rows(auth_db, key["id"]) == len(done) == 6
