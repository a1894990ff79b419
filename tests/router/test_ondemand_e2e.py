"""Full versions served on demand (real stack: gateway, auth, router, vLLM workers; the official ``openai``
client and raw HTTP).

The stack's one worker serves the default model; the router has one spare slot
(``llmsvc up``'s layout) and a short ``load_wait_s`` so that the 503 a request
gets while its version starts can be seen. Versions are registered in the
registry as a finished full fine-tune registers them: nothing else is called
before the first request names one.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time

import httpx
import openai
import pytest

from services.cli.stack import Stack, StackConfig, free_port
from services.common.pb import router_pb2

LOAD_WAIT_S = 3
IDLE_STOP_S = 20
STATIC_ALIAS = "odstatic"


async def _registry(url: str, action, *args):
    from services.common.db import registry
    from services.common.db.engine import make_engine, session_factory

    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            if action == "register":
                name, path = args
                return (await registry.register_version(s, name, str(path), recipe="sft")).id
            if action == "alias":
                alias, version = args
                return (await registry.set_alias(s, alias, version, actor="test", action="promote")).alias
            if action == "unalias":
                row = await s.get(registry.ModelAlias, args[0])
                await s.delete(row)
                await s.commit()
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def od(tmp_path_factory, default_model, api_key, pg_database):
    home = tmp_path_factory.mktemp("ondemand")
    store = home / "store"
    shutil.copytree(default_model, store / "a")
    shutil.copytree(default_model, store / "b")
    broken = store / "broken"
    shutil.copytree(default_model, broken)
    (broken / "config.json").write_text("{not json")
    cfg = StackConfig.ephemeral(home, default_model, api_key, spare_worker_ports=[free_port()],
                                database_url=pg_database(),  # the registry on PostgreSQL, as in a cluster
                                # The worker answers to an alias from its environment, as the chart's does.
                                model_aliases=[STATIC_ALIAS],
                                metrics_ports={"router": free_port()},
                                extra_env={"LLMSVC_ROUTER_LOAD_WAIT_S": str(LOAD_WAIT_S),
                                           "LLMSVC_ROUTER_IDLE_STOP_S": str(IDLE_STOP_S),
                                           "LLMSVC_WORKER_GRACE_S": "5",
                                           # A gate nothing passes: promotions here are refused.
                                           "LLMSVC_EVAL_GATE": json.dumps([{
                                               "suite": "perplexity", "metric": "perplexity", "params": {},
                                               "threshold": 1.0, "tolerance": 0.0}])})
    with Stack(cfg).running() as s:
        ids = {k: asyncio.run(_registry(cfg.db_url, "register", f"od{k}", store / k)) for k in ("a", "b", "broken")}
        yield s, ids


def _http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.cfg.base_url, headers={"Authorization": f"Bearer {stack.cfg.api_key}"},
                        timeout=180)


def _chat(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/chat/completions", json={"model": model, "max_tokens": 4, "temperature": 0,
                                                "messages": [{"role": "user", "content": "hi"}]})


def _metric(stack: Stack, name: str, **labels) -> float:
    text = httpx.get(f"http://{stack.cfg.internal_host}:{stack.cfg.metrics_ports['router']}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _until(http: httpx.Client, model: str, ok, timeout_s: float = 300) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = _chat(http, model)
        if ok(r):
            return r
        assert r.status_code == 503 and r.json()["error"]["code"] in ("model_loading", "no_capacity"), r.text
        time.sleep(1)
    raise AssertionError(f"{model} never reached the expected answer; last: {r.status_code} {r.text}")


def _served_by_workers(stack: Stack) -> set[str]:
    resp = stack.router_call("ListWorkers", router_pb2.ListWorkersRequest())
    return {m for w in resp.workers if w.healthy for m in w.load.models}


def _release(stack: Stack, version: str) -> router_pb2.ReleaseVersionResponse:
    return stack.router_call("ReleaseVersion", router_pb2.ReleaseVersionRequest(version=version))


def test_registered_versions_are_listed_before_any_worker_serves_them(od):
    stack, ids = od
    with _http(stack) as http:
        listed = {m["id"]: m for m in http.get("/models").json()["data"]}
    for version in ids.values():
        assert version in listed, listed.keys()
        assert listed[version]["root"].endswith(("/a", "/b", "/broken"))
    assert not set(ids.values()) & _served_by_workers(stack)


def test_a_version_starts_on_first_request_and_answers(od):
    """The first request waits ``load_wait_s``, then gets 503 model_loading with retry-after; requests made
    while it loads share one start; once ready it answers, under its own id."""
    stack, ids = od
    a = ids["a"]
    starts = _metric(stack, "llmsvc_router_ondemand_starts_total", outcome="started")
    with _http(stack) as http:
        t0 = time.monotonic()
        first = _chat(http, a)
        waited = time.monotonic() - t0
        assert first.status_code == 503, first.text
        err = first.json()["error"]
        assert err["code"] == "model_loading" and a in err["message"], err
        assert int(first.headers["retry-after"]) >= 1
        assert waited >= LOAD_WAIT_S - 0.5  # it waited for the worker before giving up
        again = [_chat(http, a) for _ in range(3)]
        assert all(r.status_code in (200, 503) for r in again)
        ok = _until(http, a, lambda r: r.status_code == 200)
    assert ok.json()["model"] == a and ok.json()["choices"][0]["message"]["content"] is not None
    assert _metric(stack, "llmsvc_router_ondemand_starts_total", outcome="started") == starts + 1
    assert a in _served_by_workers(stack)
    assert (stack.cfg.home / "logs" / f"worker-{a}.log").is_file()


def test_a_refused_promotion_leaves_a_version_users_started_running(od):
    """The gate refuses the candidate; only a version started for the gate itself is stopped after it. This one
    was started by a chat request, so it keeps serving."""
    stack, ids = od
    with _http(stack) as http:
        r = http.post("/models/odgate/promote", json={"version": ids["a"]})
        assert r.status_code == 409 and not r.json()["promotion"]["promoted"], r.text
        assert _chat(http, ids["a"]).status_code == 200
    assert ids["a"] in _served_by_workers(stack)


def test_a_version_that_cannot_start_is_its_own_requests_error(od):
    """A broken folder: the worker exits, that version's requests get 503 model_load_failed naming the log,
    and the base model keeps answering. Starting it evicts the idle version on the one slot."""
    stack, ids = od
    with _http(stack) as http:
        r = _until(http, ids["broken"], lambda r: r.status_code == 503
                   and r.json()["error"]["code"] == "model_load_failed", timeout_s=240)
        assert "could not be started" in r.json()["error"]["message"]
        assert f"worker-{ids['broken']}.log" in r.json()["error"]["message"]
        assert _chat(http, stack.cfg.model.name).status_code == 200
    assert _metric(stack, "llmsvc_router_ondemand_stops_total", reason="evicted") >= 1
    assert ids["a"] not in _served_by_workers(stack)


def test_the_openai_client_reaches_a_starting_version_through_its_retries(od):
    """The official client retries a 503, honouring retry-after: a user's code needs nothing special."""
    stack, ids = od
    client = openai.OpenAI(base_url=stack.cfg.base_url, api_key=stack.cfg.api_key, max_retries=60, timeout=120)
    r = client.chat.completions.create(model=ids["b"], max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.model == ids["b"] and r.choices[0].finish_reason in ("stop", "length")


def test_an_aliased_version_is_kept_and_a_full_slot_refuses_with_no_capacity(od):
    stack, ids = od
    b = ids["b"]
    asyncio.run(_registry(stack.cfg.db_url, "alias", "odchat", b))
    time.sleep(3)  # the router sees a registry change within LLMSVC_ROUTER_ADAPTER_CACHE_TTL_S (2 s)
    try:
        with _http(stack) as http:
            # The alias reaches the version; the response names the version it ran on.
            assert _until(http, "odchat", lambda r: r.status_code == 200, timeout_s=60).json()["model"] == b
            r = _chat(http, ids["a"])
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity", r.text
            assert "retry later" in r.json()["error"]["message"]
            assert int(r.headers["retry-after"]) >= 1
        kept = _release(stack, b)
        assert not kept.stopped and "alias" in kept.reason
        time.sleep(IDLE_STOP_S + 10)
        assert b in _served_by_workers(stack)  # idle, but an alias points at it
    finally:
        asyncio.run(_registry(stack.cfg.db_url, "unalias", "odchat"))


def test_an_idle_version_is_stopped(od):
    stack, ids = od
    deadline = time.monotonic() + IDLE_STOP_S + 60
    while ids["b"] in _served_by_workers(stack) and time.monotonic() < deadline:
        time.sleep(2)
    assert ids["b"] not in _served_by_workers(stack)
    assert _metric(stack, "llmsvc_router_ondemand_stops_total", reason="idle") >= 1
    assert not _release(stack, ids["b"]).stopped  # nothing left to release


def test_an_alias_follows_the_registry_past_a_worker_that_still_answers_to_it(od):
    """A promotion in a cluster: the chart's worker Deployment answers to its alias from its environment (here
    the stack's worker answers to ``odstatic`` for the default model), and a promotion moves the alias in the
    registry. Requests for the alias then go to the version the registry names: the old worker serves them
    only while that version starts (started by the first of them, none refused), then the version does.
    The chart's rollout (``OnDemandRollout``) has the version ready when it returns and drains nothing."""
    from services.common.pb import router_pb2_grpc
    from services.lifecycle.rollout import OnDemandRollout

    stack, ids = od
    b, base = ids["b"], stack.cfg.model.name
    assert b not in _served_by_workers(stack)  # stopped idle by the test before
    with _http(stack) as http:
        r = _chat(http, STATIC_ALIAS)
        assert r.status_code == 200 and r.json()["model"] == base, r.text  # no registry alias: the worker's own
        asyncio.run(_registry(stack.cfg.db_url, "alias", STATIC_ALIAS, b))
        time.sleep(3)  # the router sees a registry change within LLMSVC_ROUTER_ADAPTER_CACHE_TTL_S (2 s)
        try:
            served = []
            deadline = time.monotonic() + 300
            while not served or served[-1] != b:
                assert time.monotonic() < deadline, served
                r = _chat(http, STATIC_ALIAS)
                assert r.status_code == 200, r.text  # while b starts, the old worker answers: nothing is refused
                served.append(r.json()["model"])
                time.sleep(0.5)
            assert served[0] == base and set(served) == {base, b}, served
            assert {STATIC_ALIAS, base, b} <= _served_by_workers(stack)  # the old worker still claims the alias

            async def promote():
                channel = stack.channel(stack.cfg.router_port)
                try:
                    return await OnDemandRollout(router_pb2_grpc.RouterStub(channel), timeout_s=120).apply(
                        STATIC_ALIAS, b, None)
                finally:
                    await channel.close()

            done = asyncio.run(promote())
            assert done["serving"] and not done["drained"]
            assert base in _served_by_workers(stack)  # nothing drained: the old worker serves its own version
            assert _chat(http, base).json()["model"] == base
            assert _chat(http, STATIC_ALIAS).json()["model"] == b
        finally:
            asyncio.run(_registry(stack.cfg.db_url, "unalias", STATIC_ALIAS))
    time.sleep(3)
    with _http(stack) as http:
        assert _chat(http, STATIC_ALIAS).json()["model"] == base  # the registry forgot it: the worker's own again
