"""Render charts/llmsvc with the real Helm library (helm-python-sdk binds Helm's Go SDK) and
walk the manifests. No cluster is involved: rendering is offline, as in ``helm template``."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmsvc"
# Manifests are validated against this Kubernetes version's OpenAPI schemas (kubernetes-validate).
K8S_VERSION = "1.31.0"
RELEASE, NAMESPACE = "llmsvc", "llmsvc"

PROFILES = {
    "default": {},
    "gpu": yaml.safe_load((CHART / "values-gpu.yaml").read_text()),
    "cpu": yaml.safe_load((CHART / "values-cpu.yaml").read_text()),
}

# Every optional object switched on: in-chart databases, Ingress, HTTPRoute, ServiceMonitor,
# KEDA, an S3 model store (which the trainer cannot use, so it is off here).
EVERYTHING = {
    "postgresql": {"enabled": True},
    "redis": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "gateway": {"ingress": {"enabled": True, "tls": [{"secretName": "tls", "hosts": ["llmsvc.example.com"]}]},
                "httpRoute": {"enabled": True}},
    "trainer": {"enabled": False},
    "modelStore": {"type": "s3", "s3": {"bucket": "models", "existingSecret": "s3-creds", "endpoint": "http://minio:9000"}},
    "workers": {"keda": {"enabled": True},
                "models": [{"name": "a", "path": "a/v1", "autoscaling": {"enabled": True}},
                           {"name": "b", "path": "b/v2", "gpu": {"count": 2, "type": "NVIDIA-L4"}}]},
}


@functools.cache
def chart():
    import helm_python

    return helm_python.Chart.load(CHART)


def render(values: dict | None = None) -> dict[str, str]:
    """Template path → rendered text, as ``helm template`` would produce for an install."""
    return chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict | None = None) -> list[dict]:
    """Every rendered Kubernetes object (NOTES.txt excluded)."""
    docs = []
    for path, text in sorted(render(values).items()):
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def component(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_specs(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(owner object, pod spec) for every workload, hook Job and test Pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["spec"]


def pod_labels(obj: dict) -> dict:
    return obj["metadata"]["labels"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]["labels"]


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict) -> dict[str, Any]:
    """name → value (or valueFrom) of a container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
