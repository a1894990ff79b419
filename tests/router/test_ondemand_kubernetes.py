"""Versions started on demand in a cluster: the router's Deployment launcher against a fake Kubernetes API.

No API server can run on this machine, so this is the fake of ``tests/trainer_service/fake_k8s.py``, strict
where a real one is: every call is authorized against the Roles the rendered chart binds to the router's
service account (``llmsvc-router``). The Deployment it copies is the one the real Helm SDK renders for the
chart's first worker model, and the Deployment it creates is checked with ``kubernetes-validate``. The same
launcher code runs in a cluster; only the API server differs.
"""

from __future__ import annotations

import asyncio
import json

import kubernetes_validate
import pytest
from kubernetes import client

from services.lifecycle.kubernetes import DeploymentLauncher
from services.lifecycle.launcher import LaunchError
from tests.chart.helpers import K8S_VERSION, NAMESPACE, by_kind, env_of, manifests
from tests.chart.rbac import ChartRBAC
from tests.trainer_service.fake_k8s import FakeKubernetesAPI


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return manifests()


@pytest.fixture
def cluster(rendered):
    rendered = json.loads(json.dumps(rendered))  # each test its own copy
    fake = FakeKubernetesAPI(service_account="llmsvc-router")
    template = next(d for d in by_kind(rendered, "Deployment")
                    if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker")
    for c in template["spec"]["template"]["spec"]["containers"]:  # as the API returns it: quantities as strings
        for kind, quantities in (c.get("resources") or {}).items():
            c["resources"][kind] = {k: str(v) for k, v in quantities.items()}
    fake.objects[f"deployments/{template['metadata']['name']}"] = template
    router = next(d for d in by_kind(rendered, "Deployment")
                  if d["metadata"]["labels"].get("app.kubernetes.io/component") == "router")
    env = env_of(router["spec"]["template"]["spec"]["containers"][0])
    launcher = DeploymentLauncher.from_settings(env["LLMSVC_ROUTER_ONDEMAND_TEMPLATE"],
                                                env["LLMSVC_ROUTER_K8S_NAMESPACE"],
                                                int(env["LLMSVC_ROUTER_ONDEMAND_MAX_VERSIONS"]))
    launcher._api = client.AppsV1Api(fake.api_client())
    yield fake, launcher, template, env
    fake.close()


def test_the_chart_turns_it_on_for_the_router(cluster):
    _fake, _launcher, template, env = cluster
    assert env["LLMSVC_ROUTER_ONDEMAND"] == "kubernetes"
    assert env["LLMSVC_ROUTER_ONDEMAND_TEMPLATE"] == template["metadata"]["name"]
    assert float(env["LLMSVC_ROUTER_LOAD_WAIT_S"]) > 0 and float(env["LLMSVC_ROUTER_IDLE_STOP_S"]) > 0


def _eval_env(docs: list[dict]) -> dict:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/component")
              == "eval"]
    return env_of(dep["spec"]["template"]["spec"]["containers"][0])


def test_promotion_in_the_cluster_follows_the_routers_starts(rendered):
    """With the router starting versions as Deployments, the eval service's promotions have it serve the version
    (``OnDemandRollout``; tests/router/test_ondemand_e2e.py runs it on a live router); without, they only move
    the alias in the registry."""
    from services.eval.config import EvalSettings
    from services.eval.main import build_rollout
    from services.lifecycle.rollout import OnDemandRollout, RegistryOnlyRollout

    env = _eval_env(rendered)
    assert env["LLMSVC_EVAL_ROLLOUT"] == "ondemand"
    client = type("Client", (), {"router": object()})()
    assert isinstance(build_rollout(EvalSettings(rollout=env["LLMSVC_EVAL_ROLLOUT"]), client), OnDemandRollout)
    off = _eval_env(manifests({"router": {"ondemand": {"enabled": False}}}))
    assert off["LLMSVC_EVAL_ROLLOUT"] == "none"
    assert isinstance(build_rollout(EvalSettings(rollout="none"), client), RegistryOnlyRollout)


def test_a_version_gets_its_own_worker_deployment_copied_from_the_charts(cluster, rendered):
    fake, launcher, template, _env = cluster
    asyncio.run(launcher.start("adder-v2", "/models/adder/2"))
    created = [r.body for r in fake.requests if r.method == "POST"]
    assert len(created) == 1 and not fake.refused
    dep = created[0]
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    assert dep["metadata"]["name"] == launcher.deployment_name("adder-v2") != template["metadata"]["name"]
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]
    # Its pods are workers: the headless worker Service (which the router's EndpointSlice watch follows)
    # selects them; its own selector keeps it apart from the template's Deployment.
    (service,) = [s for s in by_kind(rendered, "Service")
                  if s["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"] != template["spec"]["selector"]["matchLabels"]
    engine = env_of(pod["spec"]["containers"][0])
    assert engine["LLMSVC_WORKER_MODEL"] == "/models/adder/2"
    assert engine["LLMSVC_WORKER_SERVED_MODEL_NAME"] == "adder-v2"
    assert json.loads(engine["LLMSVC_WORKER_MODEL_ALIASES"]) == []
    for init in pod["spec"].get("initContainers") or []:  # the model wait looks for the version's folder
        assert env_of(init).get("MODEL_DIR", "/models/adder/2") == "/models/adder/2"
    # Everything else is the operator's worker: image, resources, probes, volumes.
    tc, c = template["spec"]["template"]["spec"]["containers"][0], pod["spec"]["containers"][0]
    for key in ("image", "resources", "readinessProbe", "volumeMounts"):
        assert c.get(key) == tc.get(key), key
    assert launcher.free() == launcher.max_versions - 1


def test_start_is_idempotent_across_router_replicas_and_stop_deletes(cluster):
    fake, launcher, _template, _env = cluster
    other = DeploymentLauncher(launcher.template, launcher.namespace, launcher.max_versions, api=launcher._api)
    asyncio.run(launcher.start("adder-v2", "/models/adder/2"))
    asyncio.run(other.start("adder-v2", "/models/adder/2"))  # 409 from the API: already starting, not an error
    name = launcher.deployment_name("adder-v2")
    assert f"deployments/{name}" in fake.objects
    asyncio.run(launcher.touch("adder-v2"))  # another replica reads the last use from the Deployment
    assert any(r.method == "PATCH" and name in r.path for r in fake.requests)
    assert asyncio.run(other.last_used("adder-v2")) is not None
    asyncio.run(other.stop("adder-v2"))
    assert f"deployments/{name}" not in fake.objects
    asyncio.run(launcher.stop("adder-v2"))  # already gone: 404 is fine
    assert not fake.refused


def test_without_the_charts_grant_the_start_is_refused_clearly(cluster):
    fake, launcher, _template, _env = cluster
    fake.rbac = ChartRBAC({"router": {"ondemand": {"enabled": False}}})
    with pytest.raises(LaunchError, match="403"):
        asyncio.run(launcher.start("adder-v3", "/models/adder/3"))
    assert fake.refused and all(r.method == "GET" for r in fake.refused)
    assert NAMESPACE in fake.refused[0].path
