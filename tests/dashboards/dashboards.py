"""The chart's Grafana dashboards as data: their panels' PromQL, and the metrics the code exports.

``exported_metrics`` imports every module under services/ that uses prometheus_client and reads
the metric objects it defines (name, type, and the service that owns it), so a dashboard can be
checked against what the code really exports without running it.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts" / "llmsvc" / "dashboards"

# Grafana variables → what the tests query with: every namespace and model, and a rate window
# that spans all of the tests' traffic (Prometheus scrapes every second there).
SUBSTITUTIONS = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}
METRIC = re.compile(r"\b(llmsvc_[A-Za-z0-9_]+|vllm:[A-Za-z0-9_:]+)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SERVICE_MATCHER = re.compile(r'\bservice="([a-z]+)"')
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str
    legend: str = ""

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref}"

    @property
    def concrete(self) -> str:
        expr = self.expr
        for var, value in SUBSTITUTIONS.items():
            expr = expr.replace(var, value)
        return expr

    @property
    def metrics(self) -> set[str]:
        return set(METRIC.findall(self.expr))

    @property
    def legend_labels(self) -> set[str]:
        """Labels the legend names (``{{job_id}}``): every series the query returns must carry them."""
        return set(LEGEND_LABEL.findall(self.legend))


def load() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def queries() -> list[Query]:
    return [Query(name, p["title"], t["refId"], t["expr"], t.get("legendFormat", ""))
            for name, d in load().items() for p in panels(d) for t in p["targets"]]


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard, variable, query) of every query variable."""
    return [(name, v["name"], v["definition"]) for name, d in load().items()
            for v in d["templating"]["list"] if v["type"] == "query"]


def _metric_modules() -> list[str]:
    mods = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if "/pb/" in str(path):
            continue
        if re.search(r"^from prometheus_client import .*\b(Counter|Gauge|Histogram|Summary|Info)\b",
                     path.read_text(), re.M):
            mods.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return mods


@functools.cache
def exported_metrics() -> dict[str, str]:
    """Sample name (as Prometheus stores it) → owning service (``common`` for shared gRPC metrics)."""
    from prometheus_client.metrics import MetricWrapperBase

    out: dict[str, str] = {}
    for mod_name in _metric_modules():
        module = importlib.import_module(mod_name)
        owner = mod_name.split(".")[1]
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                for family in obj.describe():
                    for suffix in SUFFIXES[family.type]:
                        out[family.name + suffix] = owner
    return out


def owners(query: Query, exported: dict[str, str]) -> set[str]:
    """Services whose running process must export the query's metrics.

    Shared gRPC metrics belong to the service named by a ``service="..."`` matcher.
    """
    named = set(SERVICE_MATCHER.findall(query.expr))
    result = set()
    for metric in query.metrics:
        owner = exported.get(metric, "unknown")
        # Shared gRPC metrics without a service matcher: any running gRPC service exports them.
        result |= named if owner == "common" else {owner}
    return result
