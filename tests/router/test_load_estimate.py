"""How the router counts a worker's queue between load polls (``Worker.queue``).

A poll's report is up to a poll interval old. The router counts its own in-flight requests exactly and
takes from the report only what was not its own then (another router replica's requests, say)."""

from __future__ import annotations

import asyncio
from collections import Counter

from services.common.pb import inference_pb2 as pb
from services.router.pool import Worker

from .conftest import chat, generate, router_over, until
from .test_policies import served_by


def worker(reported: int, at_poll: int, now: int) -> Worker:
    return Worker("w", None, None, None, healthy=True, load=pb.Load(running=reported, models=["m"]),
                  in_flight=now, in_flight_at_poll=at_poll)


def test_requests_that_finished_since_the_poll_no_longer_count():
    assert worker(reported=8, at_poll=8, now=2).queue == 2


def test_requests_sent_since_the_poll_count_at_once():
    assert worker(reported=3, at_poll=3, now=7).queue == 7


def test_other_callers_share_of_the_report_is_added_to_ours():
    # The worker reported 10 while 4 were ours: 6 belong to someone else; we have 5 now.
    assert worker(reported=10, at_poll=4, now=5).queue == 11


def test_a_report_below_our_own_count_does_not_subtract():
    # Requests the engine had not registered yet when it answered the poll.
    assert worker(reported=1, at_poll=3, now=3).queue == 3


async def test_least_load_sees_a_worker_empty_before_the_next_poll():
    """Four long streams run on one worker and finish between two polls. The next four requests split
    two and two; a router that trusted the stale report (4 on that worker) would send all four to the other."""
    async with router_over(2, {"token_delay_s": 0.05}, policy="least_load",
                           poll_interval_s=3600) as (stub, router, standins):
        pool = router.servicer.pool
        busy, idle = standins
        idle.servicer.running = 100  # reported: the first four must all go to `busy`
        await pool.poll_all()
        first = [asyncio.create_task(generate(stub, chat(f"long {i}", max_tokens=20))) for i in range(4)]
        await until(lambda: busy.servicer.active == 4)
        idle.servicer.running = None  # report open streams from now on: 0 here, 4 on `busy`
        await pool.poll_all()
        assert pool.workers[busy.address].load.running == 4
        assert {served_by(c) for c in await asyncio.gather(*first)} == {busy.address}
        assert pool.workers[busy.address].load.running == 4  # no poll since: the report is stale

        second = await asyncio.gather(*(generate(stub, chat(f"next {i}", max_tokens=20)) for i in range(4)))
        assert Counter(served_by(c) for c in second) == {busy.address: 2, idle.address: 2}
