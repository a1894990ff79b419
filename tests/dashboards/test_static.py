"""The dashboards' structure, and every metric they name exists in the code (the registry check).

The registry check covers every panel, including those whose service the live test
(test_live.py) cannot run; the live test then proves that the running services' panels
return data from a real Prometheus.
"""

from __future__ import annotations

import pytest

from .dashboards import Query, exported_metrics, load, owners, panels, queries, variable_queries

EXPECTED = {"overview", "workers", "auth", "training", "eval"}


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    return exported_metrics()


def test_the_five_dashboards_exist_with_unique_uids():
    dashboards = load()
    assert set(dashboards) == EXPECTED
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_shape(name):
    d = load()[name]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids, cells = set(), set()
    rows = [p for p in d["panels"] if p["type"] == "row"]
    for p in [*rows, *panels(d)]:
        assert p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["title"] and p["description"] and p["targets"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area


def test_overview_covers_the_service_level_signals():
    exprs = " ".join(q.expr for q in queries() if q.dashboard == "overview")
    for quantile in ("0.5", "0.95", "0.99"):
        for metric in ("llmsvc_request_duration_seconds_bucket", "llmsvc_time_to_first_token_seconds_bucket",
                       "llmsvc_inter_token_latency_seconds_bucket"):
            assert f"histogram_quantile({quantile}, sum by (le) (rate({metric}" in exprs
    assert 'status=~"[45].."' in exprs and "llmsvc_tokens_total" in exprs and "llmsvc_requests_total" in exprs


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.id)
def test_every_panel_queries_metrics_the_code_exports(query, exported):
    assert query.metrics, "a panel without an llmsvc metric"
    unknown = query.metrics - set(exported)
    assert not unknown, f"{query.id} queries {sorted(unknown)}, which no service exports"
    # A constant fallback would make an empty panel look alive.
    assert "vector(" not in query.expr


@pytest.mark.parametrize("dashboard,variable,query", variable_queries())
def test_variables_query_exported_metrics(dashboard, variable, query, exported):
    metric = query.removeprefix("label_values(").split(",")[0]
    assert metric in exported, f"{dashboard}: ${variable} reads {metric}, which no service exports"


def test_the_registry_check_catches_an_unknown_metric(exported):
    """Guard against a vacuous check: a made-up metric is not in the registry."""
    q = Query("x", "y", "A", 'sum(rate(llmsvc_made_up_total{service="auth"}[1m]))')
    assert q.metrics - set(exported) == {"llmsvc_made_up_total"}
    assert owners(q, exported) == {"unknown"}
    assert {"llmsvc_requests_total", "llmsvc_grpc_request_duration_seconds_bucket",
            "llmsvc_worker_waiting_requests"} <= set(exported)
