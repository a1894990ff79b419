"""Routing policies over a real router and real gRPC stand-in workers (no engine: which worker is chosen
does not depend on what a model computes; see :mod:`services.router.standin`)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

from prometheus_client import REGISTRY

from .conftest import chat, generate, router_over

SYSTEM = [f"You are a terse assistant for {name}. " * 40 for name in ("sales", "billing", "support", "legal")]


def decisions(policy: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("llmsvc_router_decisions_total",
                                     {"policy": policy, "model": "standin", "outcome": outcome}) or 0.0


def served_by(chunks) -> str:
    return chunks[0].worker


async def test_prefix_aware_keeps_shared_prefixes_together_and_load_balanced():
    opts = {"token_delay_s": 0.02}
    async with router_over(2, opts, policy="prefix_aware", prefix_chunk_chars=64) as (stub, _, standins):
        # The first request of each prefix, one at a time: each is a miss and lands least-loaded (idle
        # workers: the one with the emptier index), so the four prefixes split two and two.
        reqs = [(g, chat(SYSTEM[g] + "question 0 from user 0", max_tokens=4)) for g in range(4)]
        results = [await generate(stub, r) for _, r in reqs]
        hits_before = decisions("prefix_aware", "hit")
        burst = [(g, chat(SYSTEM[g] + f"question {i} from user {i}", max_tokens=4))
                 for i in range(1, 8) for g in range(4)]
        results += await asyncio.gather(*(generate(stub, r) for _, r in burst))
        reqs += burst
        workers_of_group = defaultdict(set)
        for (g, _), chunks in zip(reqs, results, strict=True):
            workers_of_group[g].add(served_by(chunks))
        assert all(len(ws) == 1 for ws in workers_of_group.values()), workers_of_group
        per_worker = Counter(served_by(c) for c in results)
        assert sorted(per_worker.values()) == [16, 16], per_worker
        assert decisions("prefix_aware", "hit") - hits_before == 28  # the whole burst hit


async def test_prefix_aware_yields_to_load_when_one_prefix_is_hot():
    opts = {"token_delay_s": 0.05}
    async with router_over(2, opts, policy="prefix_aware", prefix_chunk_chars=64, prefix_balance_abs=3,
                           prefix_balance_rel=1.5) as (stub, _, standins):
        before = decisions("prefix_aware", "imbalance")
        results = await asyncio.gather(*(generate(stub, chat(SYSTEM[0] + f"q{i}", max_tokens=6)) for i in range(20)))
        per_worker = Counter(served_by(c) for c in results)
        assert len(per_worker) == 2, per_worker
        assert decisions("prefix_aware", "imbalance") > before
        # The cache-holding worker still takes the larger share, within the configured imbalance.
        assert max(per_worker.values()) - min(per_worker.values()) <= 2 * 3 + 2, per_worker


async def test_session_is_sticky_and_spreads_users():
    async with router_over(2, policy="session") as (stub, _, standins):
        placement = defaultdict(set)
        for _round in range(3):
            for u in range(20):
                chunks = await generate(stub, chat(f"round {_round}", user=f"user-{u}"))
                placement[u].add(served_by(chunks))
        assert all(len(ws) == 1 for ws in placement.values()), placement
        assert len({next(iter(ws)) for ws in placement.values()}) == 2
        # session_id (the x-session-id header) takes precedence over user.
        by_session = {served_by(await generate(stub, chat("x", user=f"user-{u}", session_id="conv-7")))
                      for u in range(10)}
        assert len(by_session) == 1


async def test_session_moves_only_the_sessions_of_a_departed_worker():
    async with router_over(2, policy="session") as (stub, router, standins):
        first = {u: served_by(await generate(stub, chat("hi", user=f"u{u}"))) for u in range(20)}
        gone = standins[1].address
        await standins[1].set_serving(False)
        while router.servicer.pool.workers[gone].healthy:
            await asyncio.sleep(0.02)
        after = {u: served_by(await generate(stub, chat("hi", user=f"u{u}"))) for u in range(20)}
        assert all(after[u] == first[u] for u in first if first[u] != gone)
        assert all(w != gone for w in after.values())


async def test_least_load_follows_reported_load():
    async with router_over(2, policy="least_load") as (stub, router, standins):
        standins[0].servicer.running, standins[1].servicer.running = 5, 0
        await router.servicer.pool.poll_all()
        assert {served_by(await generate(stub, chat(f"a{i}"))) for i in range(5)} == {standins[1].address}
        standins[0].servicer.running, standins[1].servicer.running = 0, 5
        await router.servicer.pool.poll_all()
        assert {served_by(await generate(stub, chat(f"b{i}"))) for i in range(5)} == {standins[0].address}


async def test_round_robin_alternates():
    async with router_over(2, policy="round_robin") as (stub, _, standins):
        order = [served_by(await generate(stub, chat("same prompt"))) for _ in range(6)]
        assert order[0::2] == [order[0]] * 3 and order[1::2] == [order[1]] * 3 and order[0] != order[1]


async def test_policy_is_chosen_per_model():
    async with router_over(2, policy="least_load", model_policies={"standin": "round_robin"}) as (stub, router, _):
        before = decisions("round_robin", "routed")
        await generate(stub, chat("x"))
        assert decisions("round_robin", "routed") == before + 1
        assert router.servicer.policies.for_model("other").name == "least_load"
