"""A gateway killed with its usage reports still unsent loses none of them (real stack, real vLLM worker).

Six streamed chats from one key finish while auth is stopped (SIGSTOP), so the gateway cannot hand their
usage to auth; then the gateway is killed (SIGKILL) and started again. Before the journal those six reports
lived only in the dead process. Now each was on disk before it was queued: the new gateway finds the dead
one's journal, sends the reports, and auth holds exactly six usage rows for the key (a report sent twice is
one row).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from tests.router.load import client_for, stream_chat


def _usage_requests(stack, api_key: str, key_id: str) -> int:
    r = httpx.get(f"{stack.cfg.base_url}/admin/keys/{key_id}/usage", params={"days": 1},
                  headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["total"]["requests"]


def test_usage_of_completed_requests_survives_a_killed_gateway(stack, api_key, model_name):
    created = httpx.post(f"{stack.cfg.base_url}/admin/keys", json={"name": "journal", "owner": "journal"},
                         headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert created.status_code == 201, created.text
    key = created.json()
    auth_pid = stack.procs["auth"].popen.pid
    journal = stack.cfg.home / "gateway-usage"

    async def finish_six_while_auth_is_stopped() -> list:
        async with client_for(stack.cfg.base_url, key["key"]) as client:
            started = [asyncio.Event() for _ in range(6)]
            streams = [asyncio.create_task(stream_chat(client, model_name, f"Count to {i + 20}.", 32, started[i],
                                                       ignore_eos=True)) for i in range(6)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 120)  # all admitted
            os.kill(auth_pid, signal.SIGSTOP)
            return await asyncio.gather(*streams)

    try:
        results = asyncio.run(finish_six_while_auth_is_stopped())
        assert all(r.status == 200 and r.done and r.error is None for r in results), results
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size for p in journal.glob("usage-*.log")):
            assert time.monotonic() < deadline, "the reports never reached the journal"
            time.sleep(0.05)
        stack.stop_proc("gateway", signal.SIGKILL)
    finally:
        os.kill(auth_pid, signal.SIGCONT)
        if stack.procs["gateway"].popen.poll() is not None:
            stack.spawn("gateway", "services.gateway.main", stack.env_for("gateway"))
            stack.wait_ready()

    deadline = time.monotonic() + 60
    while (n := _usage_requests(stack, api_key, key["id"])) < 6:
        assert time.monotonic() < deadline, f"{n} of 6 usage rows after the restart"
        time.sleep(0.5)
    time.sleep(1.0)
    assert _usage_requests(stack, api_key, key["id"]) == 6
    assert not [p for p in journal.glob("usage-*.log") if p.stat().st_size]  # delivered: emptied
