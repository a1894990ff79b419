"""The promotion gate on live workers, and a stream that runs through the switch.

The three versions are the deterministic models of ``tests/eval/models.py``:
v1 (the alias's first version) and v2 are the random tiny model with noise
(v2 much more), v3 is the unperturbed model; the gate's text was sampled from
v3. So v2 is measurably worse than v1 and v3 measurably better, on that text.
The candidates are not served at first: the router starts a worker for each
when the gate measures it (on demand), and stops it when the eval ends unless
something else serves it: a refused candidate is not left running.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
from sqlalchemy import select

from services.common.db.engine import make_engine, session_factory
from services.common.db.registry import AuditEvent, ModelAlias
from services.common.pb import router_pb2

from .conftest import GATE_DATASET, run_eval


def _db(eval_pg_url: str, fn):
    async def go():
        engine = make_engine(eval_pg_url)
        try:
            async with session_factory(engine)() as s:
                return await fn(s)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _alias(eval_pg_url, alias) -> str:
    return _db(eval_pg_url, lambda s: s.get(ModelAlias, alias)).version_id


def _audit(eval_pg_url, alias) -> list[AuditEvent]:
    async def q(s):
        return list(await s.scalars(select(AuditEvent).where(AuditEvent.target == alias).order_by(AuditEvent.id)))

    return _db(eval_pg_url, q)


def _routable(stack) -> set[str]:
    """Versions a healthy worker serves, as the router sees them."""
    resp = stack.router_call("ListWorkers", router_pb2.ListWorkersRequest())
    return {w.load.models[0] for w in resp.workers if w.healthy and w.load.models and not w.load.draining}


def test_worse_version_is_refused(gw, eval_stack, lifecycle, eval_pg_url):
    alias = lifecycle["alias"]
    r = gw.post(f"/v1/models/{alias}/promote", json={"version": lifecycle["v2"]})
    assert r.status_code == 409, r.text
    doc = r.json()["promotion"]
    check = doc["checks"][0]
    assert not doc["promoted"] and not check["passed"] and check["candidate"] > check["current"]
    assert "regresses" in check["reason"]
    assert _alias(eval_pg_url, alias) == lifecycle["v1"]
    assert _audit(eval_pg_url, alias)[-1].action == "promote_refused"
    assert lifecycle["v2"] not in _routable(eval_stack)  # the worker started for the gate is stopped


STREAM_N, STREAM_TOKENS = 16, 900  # 16: the API's most choices per request
BALLAST = 3  # more requests like it alongside, so the old worker's batch is 64 sequences


def _stream(base_url: str, key: str, model: str, out: dict) -> None:
    # 16 choices of 900 tokens each, EOS ignored, beside BALLAST more such requests (64 sequences, the
    # worker's batch): several times as long as the promotion, which moves the alias, drains the old worker
    # and waits for the router to stop routing to it, even with multiplexed hops that no longer slow the engine.
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me about the river."}], "stream": True,
            "max_tokens": STREAM_TOKENS, "n": STREAM_N, "seed": 7, "ignore_eos": True}
    events = []
    try:
        _read(base_url, key, body, events, out)
    finally:  # also on an error, so the test fails on what happened rather than waiting out a timeout
        out["events"] = events
        out["started"].set()
        out["ended"].set()


def _read(base_url, key, body, events, out) -> None:
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {key}"}) as r:
        out["status"] = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 2 * STREAM_N:
                    out["started"].set()


def test_better_version_is_promoted_while_a_stream_runs(gw, eval_stack, lifecycle, eval_models, eval_pg_url, api_key):
    alias = lifecycle["alias"]
    # Measure both sides first, so the gate reuses the runs. The worker the router started for v3's eval
    # stops when the eval ends (nothing else used it)...
    for v in ("v1", "v3"):
        assert run_eval(gw, lifecycle[v], "perplexity", dataset=GATE_DATASET)["status"] == "succeeded"
    assert lifecycle["v3"] not in _routable(eval_stack)
    # ... and a chat request to v3 starts it on demand, so the promotion itself only moves the alias.
    deadline = time.monotonic() + 300
    while (r := gw.post("/v1/chat/completions", json={"model": lifecycle["v3"], "max_tokens": 1, "messages": [
            {"role": "user", "content": "hi"}]})).status_code != 200 and time.monotonic() < deadline:
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading", r.text
    assert r.status_code == 200, r.text
    ballast_out = [{"started": threading.Event(), "ended": threading.Event()} for _ in range(BALLAST)]
    ballast = [threading.Thread(target=_stream, args=(eval_stack.cfg.base_url, api_key, alias, o)) for o in ballast_out]
    for b in ballast:
        b.start()
    out = {"started": threading.Event(), "ended": threading.Event()}
    t = threading.Thread(target=_stream, args=(eval_stack.cfg.base_url, api_key, alias, out))
    t.start()
    assert out["started"].wait(120)
    assert out.get("status") == 200 and not out["ended"].is_set(), out.get("events")
    t0 = time.monotonic()
    r = gw.post(f"/v1/models/{alias}/promote", json={"version": lifecycle["v3"]})
    promoted_while_streaming = not out["ended"].is_set()
    promote_s = time.monotonic() - t0
    t.join(300)
    for b in ballast:
        b.join(300)
    # The drain let every request on the old worker finish: all of them completed, every choice to its length.
    for o in ballast_out:
        assert o.get("status") == 200 and o["events"][-1] == "[DONE]"
        assert not any("error" in json.loads(e) for e in o["events"][:-1])
    assert r.status_code == 200, r.text
    assert r.json()["promoted"] and r.json()["checks"][0]["passed"]
    assert promoted_while_streaming, f"the stream ended before the switch ({promote_s:.1f} s); it proves nothing"
    events = out["events"]
    assert out["status"] == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    finished = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]}
    assert finished == {i: "length" for i in range(STREAM_N)}  # every choice got all its tokens
    assert {c["model"] for c in chunks} == {lifecycle["v1"]}  # every chunk, the role chunks too: the old worker
    assert _alias(eval_pg_url, alias) == lifecycle["v3"]
    # New requests for the alias reach the new version; /v1/models lists the alias under it.
    reply = gw.post("/v1/chat/completions", json={"model": alias, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]}).json()
    assert reply["model"] == lifecycle["v3"]
    listed = {d["id"]: d for d in gw.get("/v1/models").json()["data"]}
    assert listed[alias]["parent"] == lifecycle["v3"] and lifecycle["v3"] in listed


def test_force_needs_no_gate_and_is_audited(gw, lifecycle, eval_pg_url):
    alias = lifecycle["alias"]
    r = gw.post(f"/v1/models/{alias}/promote", json={"version": lifecycle["v2"], "force": True})
    assert r.status_code == 200, r.text
    assert r.json()["forced"] and not r.json()["checks"][0]["passed"]
    last = _audit(eval_pg_url, alias)[-1]
    assert last.action == "force_promote" and last.details["version_id"] == lifecycle["v2"]
    assert last.actor  # the key id that forced it
    assert _alias(eval_pg_url, alias) == lifecycle["v2"]


def test_rollback_right_after_a_promotion_starts_the_drained_version_again(gw, eval_stack, lifecycle, eval_pg_url):
    """The promotion before this one drained v3's worker (moments ago: the router still remembers it). Rolling
    back to v3 starts it again on a free slot, and the alias answers from it: a drained worker claims its
    version no more, so the router neither waits for it nor answers "not ready" at once."""
    alias = lifecycle["alias"]
    assert lifecycle["v3"] not in _routable(eval_stack)
    r = gw.post(f"/v1/models/{alias}/rollback")
    assert r.status_code == 200, r.text
    assert _alias(eval_pg_url, alias) == lifecycle["v3"]
    assert _audit(eval_pg_url, alias)[-1].action == "rollback"
    assert lifecycle["v3"] in _routable(eval_stack)
    reply = gw.post("/v1/chat/completions", json={"model": alias, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200 and reply.json()["model"] == lifecycle["v3"], reply.text
