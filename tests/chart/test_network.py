"""The rendered NetworkPolicies allow exactly the call graph.

No CNI runs here, so a small evaluator applies the NetworkPolicy semantics to the rendered
objects: a pod selected by a policy of a direction admits only what some rule of those
policies allows (peers by pod/namespace labels or ipBlock, ports by number), and a
connection needs both the sender's egress and the receiver's ingress. Every pair of the
release's pods is tried on every port the release uses, plus peers outside the release.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import NAMESPACE, PROFILES, by_kind, manifests, pod_labels, pod_specs


@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str | None = None  # None: not a pod (an address outside the cluster's pods)
    labels: dict = field(default_factory=dict, hash=False)
    ip: str = "10.1.2.3"


PROMETHEUS = Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
DNS = Peer("dns", "kube-system", {"k8s-app": "kube-dns"})
INGRESS_CONTROLLER = Peer("ingress-nginx", "ingress-nginx", {"app": "ingress-nginx"})
STRANGER = Peer("stranger", NAMESPACE, {"app": "something-else"})
INTERNET = Peer("internet", None, ip="203.0.113.7")
KUBE_API = Peer("kube-api", None, ip="10.0.0.2")
EXTERNAL_PG = Peer("external-postgresql", None, ip="10.20.0.5")
EXTERNAL_REDIS = Peer("external-redis", None, ip="10.20.1.5")
NAMESPACE_LABELS = {ns: {"kubernetes.io/metadata.name": ns}
                    for ns in (NAMESPACE, "monitoring", "kube-system", "ingress-nginx")}


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) \
        and not selector.get("matchExpressions")


def _peer_matches(rule_peer: dict, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        addr = ipaddress.ip_address(peer.ip)
        return addr in ipaddress.ip_network(block["cidr"]) and \
            not any(addr in ipaddress.ip_network(e) for e in block.get("except", []))
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        if not _matches(rule_peer["namespaceSelector"], NAMESPACE_LABELS.get(peer.namespace, {})):
            return False
    elif peer.namespace != NAMESPACE:
        return False
    return _matches(rule_peer.get("podSelector", {}), peer.labels)


def _admits(policies: list[dict], direction: str, other: Peer, port: int) -> bool:
    """True when the policies selecting a pod let ``other`` through on ``port``."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    relevant = [p for p in policies if direction in p["spec"]["policyTypes"]]
    if not relevant:
        return True
    for policy in relevant:
        for rule in policy["spec"].get(key) or []:
            ports = rule.get("ports")
            if ports and not any(p["port"] == port for p in ports):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(peer, other) for peer in peers):
                return True
    return False


class Network:
    def __init__(self, values: dict) -> None:
        docs = manifests(values)
        self.policies = by_kind(docs, "NetworkPolicy")
        self.pods = {}
        for owner, _spec in pod_specs(docs):
            labels = pod_labels(owner)
            name = labels["app.kubernetes.io/component"]
            self.pods[name] = Peer(name, NAMESPACE, labels)
        self.ports = sorted({p["containerPort"] for _, spec in pod_specs(docs) for c in spec["containers"]
                             for p in c.get("ports", [])} | {8000})

    def _selecting(self, pod: Peer) -> list[dict]:
        return [p for p in self.policies
                if pod.namespace == NAMESPACE and _matches(p["spec"]["podSelector"], pod.labels)]

    def allowed(self, src: Peer, dst: Peer, port: int) -> bool:
        ours = lambda p: p.name in self.pods and p.namespace == NAMESPACE  # noqa: E731
        egress = not ours(src) or _admits(self._selecting(src), "Egress", dst, port)
        ingress = not ours(dst) or _admits(self._selecting(dst), "Ingress", src, port)
        return egress and ingress

    def internal_edges(self) -> set[tuple[str, str, int]]:
        return {(s, d, port) for s, src in self.pods.items() for d, dst in self.pods.items() if s != d
                for port in self.ports if self.allowed(src, dst, port)}


CALL_GRAPH = {
    ("gateway", "auth", 50051), ("gateway", "router", 50052), ("gateway", "trainer", 50053),
    ("gateway", "eval", 50054), ("router", "worker", 50060), ("eval", "router", 50052),
    # The trainer has the router start a finished full fine-tune (EnsureServed) and the eval service run the
    # suites a job names.
    ("trainer", "router", 50052), ("trainer", "eval", 50054),
    # The eval service's lm-evaluation-harness backend calls the public API, and so does the trainer's batch
    # runner (a batch's lines); `helm test` checks it.
    ("eval", "gateway", 8000), ("trainer", "gateway", 8000), ("test", "gateway", 8000),
}
# The router reads the model registry (which versions are LoRA adapters of which base).
IN_CHART_DATABASES = ({(c, "postgresql", 5432) for c in ("auth", "trainer", "eval", "migrate", "router")}
                      | {("auth", "redis", 6379)})


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_pods_of_the_release_talk_exactly_along_the_call_graph(profile):
    net = Network(PROFILES[profile])
    expected = CALL_GRAPH | (IN_CHART_DATABASES if profile == "cpu" else set())
    assert net.internal_edges() == expected


def test_only_the_gateway_takes_traffic_from_outside_and_prometheus_reaches_metrics():
    net = Network({})
    for outsider in (INTERNET, STRANGER, INGRESS_CONTROLLER):
        reachable = {(name, port) for name, pod in net.pods.items() for port in net.ports
                     if net.allowed(outsider, pod, port)}
        assert reachable == {("gateway", 8000)}, outsider.name
    scraped = {(name, port) for name, pod in net.pods.items() for port in net.ports
               if net.allowed(PROMETHEUS, pod, port)}
    assert scraped == {("gateway", 8000)} | {(c, 9090) for c in ("auth", "router", "trainer", "eval", "worker")}


def test_gateway_ingress_can_be_restricted_to_the_ingress_controller():
    net = Network(PROFILES["gpu"])
    gateway = net.pods["gateway"]
    assert net.allowed(INGRESS_CONTROLLER, gateway, 8000)
    assert net.allowed(PROMETHEUS, gateway, 8000)
    assert not net.allowed(INTERNET, gateway, 8000) and not net.allowed(STRANGER, gateway, 8000)
    assert net.internal_edges() == CALL_GRAPH


def test_egress_leaves_the_release_only_where_needed():
    net = Network(PROFILES["gpu"])  # API server and database CIDRs are set there
    def senders(peer: Peer, port: int) -> set[str]:
        return {name for name, pod in net.pods.items() if net.allowed(pod, peer, port)}
    assert senders(DNS, 53) == set(net.pods)
    assert senders(KUBE_API, 443) == {"router", "trainer"}
    assert senders(EXTERNAL_PG, 5432) == {"auth", "trainer", "eval", "migrate", "router"}
    assert senders(EXTERNAL_REDIS, 6379) == {"auth"}
    assert senders(INTERNET, 443) == set()
    assert senders(PROMETHEUS, 9090) == set()


def test_the_evaluator_sees_an_open_network_without_policies():
    """Guard against a vacuous evaluator: with policies off, every pair is reachable."""
    net = Network({"networkPolicy": {"enabled": False}})
    assert len(net.internal_edges()) == len(net.pods) * (len(net.pods) - 1) * len(net.ports)
    assert net.allowed(INTERNET, net.pods["auth"], 50051)


def test_training_pods_reach_each_other_and_dns_only():
    """The pods of a training Job, labelled as the runner labels them, talk among themselves on any port
    (rendezvous, then NCCL on ports of its choosing) and to DNS; no pod of the release, the Kubernetes API,
    a database or the internet is reachable from them, and nothing of the release reaches them."""
    from services.trainer.config import KubernetesSettings
    from services.trainer.runners import Launch
    from services.trainer.runners.k8s_objects import indexed_job

    net = Network({})
    root = Path("/models/.jobs/ftjob-net")
    launch = Launch(job_id="ftjob-net", spec_path=root / "spec.json", events_path=root / "events.jsonl",
                    log_path=root / "train.log", nodes=2, nproc_per_node=1)
    job = indexed_job(launch, KubernetesSettings(namespace=NAMESPACE), store_path="/models", module="trainer.run",
                      grace_s=60)
    labels = job["spec"]["template"]["metadata"]["labels"]
    chart_pods = dict(net.pods)
    ranks = [Peer(f"train-{i}", NAMESPACE, labels) for i in range(2)]
    for r in ranks:
        net.pods[r.name] = r
    for port in (29500, 41234):
        assert net.allowed(ranks[0], ranks[1], port) and net.allowed(ranks[1], ranks[0], port)
    assert net.allowed(ranks[0], DNS, 53)
    for pod in chart_pods.values():
        for port in net.ports:
            assert not net.allowed(ranks[0], pod, port), (pod.name, port)
            assert not net.allowed(pod, ranks[0], port), (pod.name, port)
    for outside, port in ((KUBE_API, 443), (EXTERNAL_PG, 5432), (INTERNET, 443), (STRANGER, 8000)):
        assert not net.allowed(ranks[0], outside, port), outside.name
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
