"""How the chart tells the router where the workers are: EndpointSlices (the default), DNS of the
headless worker Service, or a static list. Rendered with the real Helm SDK and validated with
kubernetes-validate; the router's own settings class reads the rendered environment."""

from __future__ import annotations

import helm_python
import kubernetes_validate
import pytest

from services.router.config import RouterSettings

from .helpers import K8S_VERSION, NAMESPACE, PROFILES, by_kind, component, deep_merge, env_of, manifests, render
from .test_network import DNS, KUBE_API, Network
from .test_service_env import _env

WORKER_SERVICE = "llmsvc-worker"
DNS_VALUES = {"router": {"discovery": "dns"}}


def _router(docs: list[dict]) -> dict:
    (deployment,) = [d for d in by_kind(docs, "Deployment") if component(d) == "router"]
    return deployment


def _router_settings(docs: list[dict], monkeypatch) -> RouterSettings:
    for name, value in _env(_router(docs)["spec"]["template"]["spec"]["containers"][0]).items():
        monkeypatch.setenv(name, value)
    return RouterSettings()


def _worker_service(docs: list[dict]) -> dict:
    (service,) = [d for d in by_kind(docs, "Service") if component(d) == "worker"]
    return service


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_dns_discovery_resolves_the_headless_worker_service(profile, monkeypatch):
    docs = manifests(deep_merge(PROFILES[profile], DNS_VALUES))
    for doc in docs:
        if doc["kind"] in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    env = env_of(_router(docs)["spec"]["template"]["spec"]["containers"][0])
    assert env["LLMSVC_ROUTER_DISCOVERY"] == "dns"
    assert env["LLMSVC_ROUTER_DNS_NAME"] == f"{WORKER_SERVICE}.{NAMESPACE}.svc:50060"
    assert not {k for k in env if k.startswith("LLMSVC_ROUTER_K8S_")} and "LLMSVC_ROUTER_WORKERS" not in env
    settings = _router_settings(docs, monkeypatch)
    assert settings.discovery == "dns" and settings.dns_name == env["LLMSVC_ROUTER_DNS_NAME"]

    # The name resolves to every worker pod: a headless Service selecting them, its port the one dialled.
    service = _worker_service(docs)
    assert service["metadata"]["name"] == WORKER_SERVICE and service["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 50060
    workers = [d for d in by_kind(docs, "Deployment") if component(d) == "worker"]
    assert workers
    for w in workers:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), w["metadata"]["name"]

    # No Kubernetes API: no token, no Role, no egress to the API server; DNS and the workers still reachable.
    assert _router(docs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    (account,) = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == "llmsvc-router"]
    assert account["automountServiceAccountToken"] is False
    assert not [d for d in by_kind(docs, "Role") + by_kind(docs, "RoleBinding") if "router" in d["metadata"]["name"]]
    net = Network(deep_merge(PROFILES[profile], DNS_VALUES))
    router = net.pods["router"]
    assert net.allowed(router, DNS, 53) and net.allowed(router, net.pods["worker"], 50060)
    assert not net.allowed(router, KUBE_API, 443)


def test_dns_name_follows_the_worker_port_and_can_be_overridden(monkeypatch):
    moved = manifests(deep_merge(DNS_VALUES, {"workers": {"port": 50070}}))
    assert env_of(_router(moved)["spec"]["template"]["spec"]["containers"][0])["LLMSVC_ROUTER_DNS_NAME"] \
        == f"{WORKER_SERVICE}.{NAMESPACE}.svc:50070"
    assert {p["name"]: p["port"] for p in _worker_service(moved)["spec"]["ports"]}["grpc"] == 50070
    own = manifests(deep_merge(DNS_VALUES, {"router": {"dnsName": "workers.inference.svc.cluster.local:6000"}}))
    assert _router_settings(own, monkeypatch).dns_name == "workers.inference.svc.cluster.local:6000"


def test_endpointslice_discovery_falls_back_to_the_same_service_on_the_worker_port(monkeypatch):
    docs = manifests({"workers": {"port": 50070}})
    settings = _router_settings(docs, monkeypatch)
    assert settings.discovery == "kubernetes" and settings.k8s_service == WORKER_SERVICE
    # Without it the router's fallback would guess <service>.<namespace>.svc:50060.
    assert settings.dns_name == f"{WORKER_SERVICE}.{NAMESPACE}.svc:50070"
    assert _router(docs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert [d for d in by_kind(docs, "Role") if "router" in d["metadata"]["name"]]  # what dns mode goes without


@pytest.mark.parametrize("router", [{"discovery": "consul"}, {"discovery": "dns", "dnsName": "llmsvc-worker"},
                                    {"dnsName": "host:port"}])
def test_values_schema_rejects_bad_discovery(router):
    with pytest.raises(helm_python.HelmValuesError):
        render({"router": router})
