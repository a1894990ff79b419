"""The chart renders, lints clean, validates against Kubernetes' schemas, and its values schema
holds: rendered with the real Helm Go SDK (helm-python-sdk), checked with kubernetes-validate."""

from __future__ import annotations

import json

import helm_python
import kubernetes_validate
import pytest
import yaml

from .helpers import CHART, EVERYTHING, K8S_VERSION, PROFILES, by_kind, component, deep_merge, env_of, manifests, render

# Custom resources kubernetes-validate has no schema for; checked structurally below instead.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute")}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_lint_is_clean(profile):
    report = helm_python.lint(CHART, PROFILES[profile], strict=True, namespace="llmsvc", kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("profile", [*sorted(PROFILES), "everything"])
def test_manifests_validate_against_kubernetes_schemas(profile):
    docs = manifests(EVERYTHING if profile == "everything" else PROFILES[profile])
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRDS:
            assert doc["metadata"]["name"] and doc["spec"], key
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_catches_a_bad_manifest():
    """Guard against a validator that accepts anything: strict mode refuses an unknown field."""
    doc = next(d for d in manifests() if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_default_install_has_every_service():
    docs = manifests()
    deployments = {component(d) for d in by_kind(docs, "Deployment")}
    assert deployments == {"gateway", "auth", "router", "trainer", "eval", "worker"}
    services = {component(d) for d in by_kind(docs, "Service")}
    assert services == {"gateway", "auth", "router", "trainer", "eval", "worker"}
    assert by_kind(docs, "PersistentVolumeClaim")[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"]["name"] == "llmsvc-gateway"
    assert {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            for d in by_kind(docs, "PodDisruptionBudget")} == {"gateway", "auth", "router", "worker"}
    # External databases by default: no in-chart StatefulSets.
    assert by_kind(docs, "StatefulSet") == []


def test_gpu_profile_autoscales_with_keda_and_scrapes_with_a_servicemonitor():
    docs = manifests(PROFILES["gpu"])
    workers = [d for d in by_kind(docs, "Deployment") if component(d) == "worker"]
    assert sorted(d["metadata"]["name"] for d in workers) == ["llmsvc-worker-llama-3-1-70b-instruct",
                                                             "llmsvc-worker-llama-3-1-8b-instruct"]
    (scaled,) = by_kind(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "llmsvc-worker-llama-3-1-8b-instruct"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "llmsvc_worker_waiting_requests" in trigger["metadata"]["query"]
    # KEDA owns the HPA of the autoscaled model; the chart renders only the gateway's.
    assert [h["metadata"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")] == ["llmsvc-gateway"]
    # An autoscaled Deployment leaves replicas to the autoscaler.
    autoscaled = next(d for d in workers if d["metadata"]["name"].endswith("8b-instruct"))
    assert "replicas" not in autoscaled["spec"]
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "http"}


def test_worker_hpa_follows_queue_depth_without_keda():
    values = {"workers": {"models": [{"name": "m", "path": "m/v1",
                                      "autoscaling": {"enabled": True, "targetWaitingRequests": 3}}]}}
    hpa = next(h for h in by_kind(manifests(values), "HorizontalPodAutoscaler")
               if h["metadata"]["name"] == "llmsvc-worker-m")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "llmsvc_worker_waiting_requests"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "3"}


def test_cpu_profile_runs_everything_in_chart():
    docs = manifests(PROFILES["cpu"])
    assert {component(d) for d in by_kind(docs, "StatefulSet")} == {"postgresql", "redis"}
    worker = next(d for d in by_kind(docs, "Deployment") if component(d) == "worker")
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"].endswith("/llmsvc-worker-cpu:0.1.0")
    # The in-chart database runs migrations after install (its Secret does not exist before).
    (migrate,) = by_kind(docs, "Job")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_migrations_run_as_a_pre_install_hook_with_an_external_database():
    (job,) = by_kind(manifests(), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["llmsvc", "db", "upgrade"]


def test_dashboards_ship_as_labelled_configmaps():
    maps = [d for d in by_kind(manifests(), "ConfigMap") if component(d) == "dashboards"]
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(k for m in maps for k in m["data"]) == files
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        (name, text), = m["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text())


def test_notes_tell_how_to_get_a_key_and_send_a_request():
    notes = render()["llmsvc/templates/NOTES.txt"]
    assert "llmsvc keys create" in notes and "llmsvc-auth-bootstrap-key" in notes
    assert "/v1/chat/completions" in notes and "tiny-chat" in notes


BAD_VALUES = {
    "unknown top-level key": {"gatewy": {}},
    "unknown nested key": {"gateway": {"replica": 3}},
    "negative replicas": {"auth": {"replicas": -1}},
    "port out of range": {"router": {"port": 70000}},
    "model without path": {"workers": {"models": [{"name": "m"}]}},
    "no models": {"workers": {"models": []}},
    "memory utilization above 1": {"workers": {"models": [{"name": "m", "path": "m/v1",
                                                           "engine": {"gpuMemoryUtilization": 1.5}}]}},
    "GPUs on a CPU profile": {"workers": {"accelerator": "cpu"}},
    "GPU training Jobs on the CPU image": {"trainer": {"jobs": {"accelerator": "cpu"}}},
    "no GPUs on a CUDA profile": {"workers": {"models": [{"name": "m", "path": "m/v1", "gpu": {"count": 0}}]}},
    "bad accelerator": {"workers": {"accelerator": "tpu"}},
    "bad quantity": {"gateway": {"resources": {"requests": {"cpu": "lots"}, "limits": {}}}},
    # null removes a default key in Helm.
    "resources without limits": {"eval": {"resources": {"limits": None}}},
    "s3 without bucket": {"modelStore": {"type": "s3"}},
    "external database without secret": {"postgresql": {"external": {"existingSecret": ""}}},
    "root containers": {"podSecurityContext": {"runAsNonRoot": False}},
    "privilege escalation": {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
    "unknown routing policy": {"router": {"policy": "random"}},
    "bad log level": {"logLevel": "LOUD"},
    "bad keda metric": {"workers": {"keda": {"enabled": True, "metric": "gpu"}}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects(case):
    with pytest.raises(helm_python.HelmValuesError):
        render(BAD_VALUES[case])


def test_schema_offers_exactly_the_routers_policies():
    from typing import get_args

    from services.router.config import RouterSettings

    router = json.loads((CHART / "values.schema.json").read_text())["properties"]["router"]["properties"]
    policies = set(get_args(RouterSettings.model_fields["policy"].annotation))
    assert set(router["policy"]["enum"]) == set(router["modelPolicies"]["additionalProperties"]["enum"]) == policies
    router_deploy = next(d for d in by_kind(manifests({"router": {"policy": "kv_aware"}}), "Deployment")
                         if component(d) == "router")
    assert env_of(router_deploy["spec"]["template"]["spec"]["containers"][0])["LLMSVC_ROUTER_POLICY"] == "kv_aware"


def test_template_refuses_a_trainer_without_a_shared_filesystem():
    values = {"modelStore": {"type": "s3", "s3": {"bucket": "b", "existingSecret": "s"}}}
    with pytest.raises(helm_python.HelmRenderError, match="trainer.enabled needs modelStore.type=pvc"):
        render(values)
    assert manifests(deep_merge(values, {"trainer": {"enabled": False}}))


def _schema_node(schema: dict, node: dict) -> dict:
    return schema["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


def _uncovered(value, node: dict, schema: dict, path: str) -> list[str]:
    """Paths of values the schema does not name (free-form maps excepted)."""
    node = _schema_node(schema, node)
    if isinstance(value, dict) and "properties" in node:
        missing = []
        for key, sub in value.items():
            if key in node["properties"]:
                missing += _uncovered(sub, node["properties"][key], schema, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                missing.append(f"{path}.{key}")
        return missing
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [m for i, v in enumerate(value) for m in _uncovered(v, node["items"], schema, f"{path}[{i}]")]
    return []


def _closed_objects(node, schema: dict, path: str = "") -> list[str]:
    """Object schemas that list properties but would accept unknown keys."""
    open_ = []
    if isinstance(node, dict):
        if "properties" in node and node.get("type") == "object" and node.get("additionalProperties") is not False:
            open_.append(path)
        for key, sub in node.items():
            open_ += _closed_objects(sub, schema, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            open_ += _closed_objects(sub, schema, f"{path}/{i}")
    return open_


def test_values_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    for name in ("values.yaml", "values-gpu.yaml", "values-cpu.yaml"):
        values = yaml.safe_load((CHART / name).read_text())
        assert _uncovered(values, schema, schema, name) == []
    # Security contexts stay open on purpose (any Kubernetes field), with their safety fields pinned.
    allowed_open = {"/properties/podSecurityContext", "/properties/containerSecurityContext",
                    "/definitions/env/items"}
    assert set(_closed_objects(schema, schema)) <= allowed_open
