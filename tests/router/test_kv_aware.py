"""The ``kv_aware`` policy: pure decisions over :class:`Worker` objects with set loads (no channels are
dialled), its settings, and one run through a real router over real gRPC stand-in workers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.pb import inference_pb2 as pb
from services.router.config import RouterSettings
from services.router.policies import KvAwarePolicy, PolicyTable, make_policy
from services.router.pool import Worker
from services.router.prefix import chunk_keys

from .conftest import chat, generate, router_over
from .test_policies import SYSTEM, decisions, served_by

PREFIX = "You are a terse assistant for the billing team. " * 20  # 980 chars: 15 chunks of 64


def worker(address: str, running: int = 0, kv: float = 0.0, in_flight: int = 0) -> Worker:
    return Worker(address, None, None, None, healthy=True, in_flight=in_flight,
                  load=pb.Load(running=running, kv_cache_usage=kv, models=["m"]))


def prompt(question: str, prefix: str = PREFIX) -> pb.GenerateRequest:
    return pb.GenerateRequest(model="m", prompt=prefix + question)


def policy(**kwargs) -> KvAwarePolicy:
    return KvAwarePolicy(chunk=64, **kwargs)


def warmed(holder: Worker, other: Worker, **kwargs) -> KvAwarePolicy:
    """A policy whose index says ``holder`` has seen PREFIX (its first request, a miss, went there)."""
    p = policy(**kwargs)
    assert p.choose([holder], prompt("first")) == (holder, "miss")
    return p


def test_a_shared_prefix_goes_to_its_holder_while_loads_are_comparable():
    a, b = worker("a"), worker("b")
    p = policy()
    first = p.choose([a, b], prompt("q0"))
    assert first.outcome == "miss"
    holder, other = (a, b) if first.worker is a else (b, a)
    holder.load.running = 1  # one request more than the idle worker: not worth a full prefill elsewhere
    for i in range(1, 4):
        assert p.choose([a, b], prompt(f"q{i}")) == (holder, "hit")
    # A new prefix is a miss and spreads to the other (idle, emptier index) worker.
    assert p.choose([a, b], prompt("q", prefix="Another team's long system prompt. " * 30)) == (other, "miss")


def test_a_much_busier_holder_loses_to_an_idle_worker():
    holder, idle = worker("a"), worker("b")
    p = warmed(holder, idle)
    holder.load.running = 6
    assert p.choose([holder, idle], prompt("q")) == (idle, "load")
    # The router's own in-flight count weighs the same between polls.
    holder = worker("a", in_flight=6)
    p = warmed(holder, idle)
    assert p.choose([holder, idle], prompt("q")) == (idle, "load")


def test_a_fuller_kv_cache_tips_the_balance():
    holder, idle = worker("a", running=1), worker("b")
    p = warmed(holder, idle)
    assert p.choose([holder, idle], prompt("q1")).outcome == "hit"
    holder.load.kv_cache_usage = 0.8
    p = warmed(holder, idle)
    assert p.choose([holder, idle], prompt("q2")) == (idle, "load")


def test_saturated_workers_are_avoided_unless_all_are():
    holder, idle = worker("a", kv=0.97), worker("b", running=20, kv=0.5)
    p = warmed(holder, idle)
    assert p.choose([holder, idle], prompt("q1")) == (idle, "load")
    idle.load.kv_cache_usage = 0.99
    p = warmed(holder, idle)
    assert p.choose([holder, idle], prompt("q2")) == (holder, "hit")


def test_weights_change_the_decision():
    holder, idle = worker("a", running=6), worker("b")
    assert warmed(holder, idle).choose([holder, idle], prompt("q")).worker is idle
    assert warmed(holder, idle, weights={"prefix": 10, "queue": 1}).choose([holder, idle], prompt("q")) \
        == (holder, "hit")
    # Without the prefix scorer it is least-load (with KV usage) whatever the index says.
    holder.load.running = 1
    assert warmed(holder, idle, weights={"queue": 1, "kv": 1}).choose([holder, idle], prompt("q")) \
        == (idle, "load")


def test_forget_drops_the_workers_prefixes():
    holder, other = worker("a"), worker("b")
    p = warmed(holder, other)
    p.forget(holder.address)
    assert p.choose([holder, other], prompt("q")).outcome == "miss"


def test_partial_matches_score_by_share_of_the_prompt():
    deep, shallow = worker("a"), worker("b")
    p = policy()
    p.choose([deep], prompt("x" * 640))
    p.choose([shallow], prompt("y" * 640))  # shares only PREFIX's 15 chunks with the request below
    request = prompt("x" * 640)
    keys = chunk_keys(request, 64)
    depth = p.index.match(keys, {deep.address, shallow.address})
    assert depth == {deep.address: len(keys), shallow.address: 15}
    scores = p.scores(shallow, 0, depth, len(keys))
    assert scores == {"prefix": 15 / len(keys), "queue": 1.0, "kv": 1.0, "adapter": 0.0}
    assert p.choose([deep, shallow], request) == (deep, "hit")


def adapter_request(adapter: str, question: str = "q") -> pb.GenerateRequest:
    return pb.GenerateRequest(model=adapter, prompt=question, adapter=pb.LoraAdapter(name=adapter, path="/a"))


def test_an_adapter_goes_to_the_worker_holding_it_while_loads_are_comparable():
    holder, other = worker("b"), worker("a")  # the holder loses every tie-breaker but the adapter
    holder.load.adapters.append("teal")
    holder.load.running = 1
    p = policy()
    assert p.choose([holder, other], adapter_request("teal")).worker is holder
    # Requests without an adapter, or for another one, ignore it: the idler worker wins.
    assert p.choose([holder, other], pb.GenerateRequest(model="m", prompt="q")).worker is other
    assert p.choose([holder, other], adapter_request("plum")).worker is other


def test_a_much_busier_adapter_holder_loses_and_the_new_holder_is_remembered_before_its_report():
    holder, idle = worker("a"), worker("b")
    holder.load.adapters.append("teal")
    holder.load.running = 6
    p = policy()
    assert p.choose([holder, idle], adapter_request("teal")).worker is idle
    holder.load.running = 1  # now comparable: both hold it (idle's report does not list it yet), load decides
    idle.load.running = 0
    assert p.choose([holder, idle], adapter_request("teal", "q2")).worker is idle
    p.forget(idle.address)  # restarted: what it held is gone
    assert p.choose([holder, idle], adapter_request("teal", "q3")).worker is holder


@pytest.mark.parametrize("weights, message", [
    ({"cache": 1}, "unknown kv_aware scorer"),
    ({"prefix": -1, "queue": 1}, "finite and >= 0"),
    ({"prefix": 0, "queue": 0}, "at least one scorer"),
])
def test_bad_weights_are_rejected_at_start_up(monkeypatch, weights, message):
    import json

    with pytest.raises(ValidationError, match=message):
        RouterSettings(kv_aware_weights=weights)
    monkeypatch.setenv("LLMSVC_ROUTER_KV_AWARE_WEIGHTS", json.dumps(weights))
    with pytest.raises(ValidationError, match=message):
        RouterSettings()
    with pytest.raises(ValueError, match=message):
        KvAwarePolicy(weights)


def test_settings_reach_the_policy(monkeypatch):
    assert make_policy("kv_aware").weights == {"prefix": 2, "queue": 3, "kv": 1, "adapter": 2}
    monkeypatch.setenv("LLMSVC_ROUTER_POLICY", "kv_aware")
    monkeypatch.setenv("LLMSVC_ROUTER_KV_AWARE_WEIGHTS", '{"prefix": 1, "queue": 2}')
    monkeypatch.setenv("LLMSVC_ROUTER_KV_AWARE_SATURATION", "0.9")
    p = PolicyTable(RouterSettings()).for_model("m")
    assert (p.name, p.weights, p.saturation) == ("kv_aware", {"prefix": 1, "queue": 2}, 0.9)
    with pytest.raises(ValidationError):
        RouterSettings(kv_aware_saturation=1.5)


async def test_kv_aware_through_the_router_follows_reported_queues_and_kv_usage():
    """Stand-ins report the load they are told; the router polls it, as it polls vLLM's scheduler stats."""
    async with router_over(2, {"running": 0}, policy="kv_aware", prefix_chunk_chars=64) as (stub, router, standins):
        by_address = {s.address: s.servicer for s in standins}
        before = {o: decisions("kv_aware", o) for o in ("hit", "miss", "load")}

        async def route(group: int, question: str) -> str:
            return served_by(await generate(stub, chat(SYSTEM[group] + question)))

        holder = await route(0, "q0")  # a miss
        assert {await route(0, f"q{i}") for i in range(1, 4)} == {holder}  # hits
        other = next(a for a in by_address if a != holder)
        by_address[holder].running = 8
        await router.servicer.pool.poll_all()
        assert await route(0, "q4") == other  # load: a queue of 8 against 0 outweighs the prefix

        by_address[holder].running = 0
        holder1 = await route(1, "q0")  # a miss
        by_address[holder1].kv_cache_usage = 0.97
        await router.servicer.pool.poll_all()
        assert await route(1, "q1") != holder1  # load: its KV cache is saturated
        after = {o: decisions("kv_aware", o) - before[o] for o in before}
        assert after == {"hit": 3, "miss": 2, "load": 2}, after
