"""Every dashboard panel returns data from a real Prometheus scraping the real local stack.

What runs: gateway, auth, router, one vLLM worker (CPU), eval and trainer (local runner) as
separate processes (the stack ``llmsvc up`` runs, with the router admitting one request per
worker so that concurrent requests queue), scraped each second by Debian's Prometheus.
Traffic, in two rounds: plain and concurrent streamed chat completions, a bad key (401), an
unknown model (404), a key limited to one request a minute used twice (429), an eval run, a
training-file upload and, in the second round, a real fine-tuning job of the tiny model
(150 steps) run to completion. Then every panel's PromQL is evaluated through Prometheus's
HTTP API over the span of the measured round, with the Grafana variables set to "all" (what
a Grafana graph of that span shows); each must have a finite point.

A panel whose service the test stack does not run is skipped, naming the service (its metric
names are still checked against the code in test_static.py). A panel whose metric no running
service exports gets no data and fails.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .conftest import query, query_range, scrape_targets, series
from .dashboards import exported_metrics, owners, queries, variable_queries

QUERIES = queries()


@pytest.fixture(scope="module")
def running(observed_stack) -> set[str]:
    return set(scrape_targets(observed_stack))


def _wait_for_scrapes(prometheus: str, jobs: int, after: float) -> None:
    """Until every target has been scraped after ``after`` (Unix seconds)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len([r for r in query(prometheus, "timestamp(up == 1)") if float(r["value"][1]) > after]) >= jobs:
            return
        time.sleep(0.5)


def _drive(cfg, round_: int) -> None:
    """One round of every kind of request the panels need."""
    model = cfg.served_model_name or cfg.model.name
    client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "count from one to ten"}]

    def stream(_=None) -> None:
        for _chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=16, stream=True):
            pass

    client.chat.completions.create(model=model, messages=messages, max_tokens=16)
    # Concurrent streams queue in the router (the stack admits one request per worker at a time).
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(stream, range(3)))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=cfg.base_url, api_key="sk-not-a-key", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    admin = {"Authorization": f"Bearer {cfg.api_key}"}
    created = httpx.post(f"{cfg.base_url}/admin/keys", headers=admin, timeout=30,
                         json={"name": f"dashboards-rpm-1-{round_}", "scopes": ["chat"], "rpm": 1})
    assert created.status_code == 201, created.text
    limited = openai.OpenAI(base_url=cfg.base_url, api_key=created.json()["key"], max_retries=0, timeout=120)
    limited.chat.completions.create(model=model, messages=messages, max_tokens=4)
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model=model, messages=messages, max_tokens=4)
    run = httpx.post(f"{cfg.base_url}/evals", headers=admin, timeout=60,
                     json={"model": model, "suite": "perplexity", "params": {"dataset": "heldout.txt", "limit": 2}})
    assert run.status_code == 200, run.text
    assert httpx.get(f"{cfg.base_url}/evals", headers=admin, timeout=30).status_code == 200
    _train(cfg, admin, submit=round_ == 2)


def _train(cfg, admin: dict, submit: bool) -> None:
    """Upload training data; in the measured round also fine-tune the tiny model and wait for it."""
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i} {i}"}]}
            for i in range(32)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    upload = httpx.post(f"{cfg.base_url}/files", headers=admin, timeout=60, data={"purpose": "fine-tune"},
                        files={"file": ("train.jsonl", data, "application/jsonl")})
    assert upload.status_code == 200, upload.text
    assert httpx.get(f"{cfg.base_url}/fine_tuning/jobs", headers=admin, timeout=30).status_code == 200
    if not submit:
        return
    # Enough steps that the job runs for several scrapes (its loss gauges exist only while it runs).
    job = httpx.post(f"{cfg.base_url}/fine_tuning/jobs", headers=admin, timeout=60, json={
        "model": "tiny-random", "training_file": upload.json()["id"],
        "hyperparameters": {"steps": 150, "batch_size": 2, "seq_len": 64}})
    assert job.status_code == 200, job.text
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = httpx.get(f"{cfg.base_url}/fine_tuning/jobs/{job.json()['id']}", headers=admin, timeout=30).json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    assert state["status"] == "succeeded", state


@pytest.fixture(scope="module")
def traffic(observed_stack, prometheus) -> tuple[float, float]:
    """Two rounds of traffic; returns the span (Unix s) of the measured one.

    A labelled series appears with its first increment, which Prometheus cannot see as a rate:
    the first round creates every series, Prometheus scrapes them, the second round is measured.
    """
    cfg, jobs = observed_stack.cfg, len(observed_stack.procs)
    _wait_for_scrapes(prometheus, jobs, after=time.time())
    _drive(cfg, 1)
    start = time.time()
    _wait_for_scrapes(prometheus, jobs, after=start)
    _drive(cfg, 2)
    end = time.time() + 2
    _wait_for_scrapes(prometheus, jobs, after=end)
    return start, end


@pytest.fixture(scope="module")
def results(traffic, prometheus, running) -> dict[str, list[dict]]:
    """Each live panel query over the measured round, as a Grafana graph of that span shows it."""
    live = [q for q in QUERIES if owners(q, exported_metrics()) <= running]
    return {q.id: query_range(prometheus, q.concrete, *traffic) for q in live}


def _finite(result: list[dict]) -> bool:
    """At least one finite point in any series of a range result."""
    return any(math.isfinite(float(v)) for r in result for _, v in r["values"])


def test_prometheus_scrapes_every_service(traffic, prometheus, running):
    up = {r["metric"]["job"]: r["value"][1] for r in query(prometheus, "up")}
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert up == {job: "1" for job in running}, [(t["labels"], t["health"], t["lastError"]) for t in targets]
    assert {"gateway", "auth", "router", "worker", "eval"} <= running


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.id)
def test_panel_returns_data(q, results, running):
    needed = owners(q, exported_metrics())
    if not needed <= running:
        pytest.skip(f"needs {', '.join(sorted(needed - running))}, which the test stack does not run "
                    f"(metric names checked in test_static)")
    assert _finite(results[q.id]), f"no data for {q.id}: {q.concrete}"
    # A legend label missing from the series (say one Prometheus renamed to exported_*) shows blank.
    for r in results[q.id]:
        assert q.legend_labels <= r["metric"].keys(), f"{q.id}: legend {q.legend!r} but series {r['metric']}"


@pytest.mark.parametrize("dashboard,variable,expr", variable_queries())
def test_variable_has_values(dashboard, variable, expr, traffic, prometheus, running):
    metric = expr.removeprefix("label_values(").split(",")[0]
    if exported_metrics()[metric] not in running | {"common"}:
        pytest.skip(f"{metric} comes from a service the test stack does not run")
    assert series(prometheus, metric), f"{dashboard}: ${variable} has no series of {metric}"
