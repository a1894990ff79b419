"""Policy checks on the rendered manifests: GPU placement, container hardening, graceful
termination and least-privilege RBAC. (NetworkPolicies: test_network.py.)"""

from __future__ import annotations

import pytest

from .helpers import EVERYTHING, PROFILES, by_kind, component, containers, env_of, manifests, pod_labels, pod_specs

GPU = "nvidia.com/gpu"
ALL_PROFILES = [*sorted(PROFILES), "everything"]


def _values(profile: str) -> dict:
    return EVERYTHING if profile == "everything" else PROFILES[profile]


def _gpus(spec: dict) -> int:
    return sum(int((c.get("resources", {}).get(part) or {}).get(GPU, 0))
               for c in containers(spec) for part in ("limits", "requests"))


def _tolerates_gpu_taint(spec: dict) -> bool:
    return any(t.get("key") == GPU for t in spec.get("tolerations", []))


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_gpu_pods_land_only_on_the_gpu_pool(profile):
    docs = manifests(_values(profile))
    gpu_pods = 0
    for owner, spec in pod_specs(docs):
        if _gpus(spec):
            gpu_pods += 1
            assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true", owner["metadata"]["name"]
            assert _tolerates_gpu_taint(spec)
            assert {v["name"] for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"} == {"dshm"}
        else:
            # Neither asks for GPUs nor tolerates the GPU taint, so it never takes a GPU node's room.
            assert not _tolerates_gpu_taint(spec), owner["metadata"]["name"]
            assert GPU not in str(spec.get("nodeSelector", {}))
    assert gpu_pods == (0 if profile == "cpu" else len(_values(profile).get("workers", {}).get("models", [1])))


def test_gpu_count_type_and_tensor_parallelism_follow_the_model():
    docs = manifests(PROFILES["gpu"])
    big = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("70b-instruct"))
    spec = big["spec"]["template"]["spec"]
    engine = spec["containers"][0]
    assert engine["resources"]["limits"][GPU] == 4
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    env = env_of(engine)
    assert env["LLMSVC_WORKER_TENSOR_PARALLEL_SIZE"] == "4"
    assert env["LLMSVC_WORKER_MAX_MODEL_LEN"] == "32768"
    assert env["LLMSVC_WORKER_ENABLE_PREFIX_CACHING"] == "true"
    assert env["LLMSVC_WORKER_GPU_MEMORY_UTILIZATION"] == "0.92"
    assert env["LLMSVC_WORKER_ENGINE_ARGS"] == '{"enable_chunked_prefill":true}'
    assert env["LLMSVC_WORKER_MODEL"] == "/models/llama-3.1-70b-instruct/v1"
    small = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("8b-instruct"))
    assert env_of(small["spec"]["template"]["spec"]["containers"][0])["LLMSVC_WORKER_ENGINE_ARGS"] \
        == '{"enable_chunked_prefill":true,"max_num_batched_tokens":8192}'


@pytest.mark.parametrize("store", ["pvc", "s3"])
def test_an_init_container_makes_the_model_present_first(store):
    values = EVERYTHING if store == "s3" else {}
    worker = next(d for d in by_kind(manifests(values), "Deployment") if component(d) == "worker")
    spec = worker["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    model_dir = env_of(spec["containers"][0])["LLMSVC_WORKER_MODEL"]
    assert env_of(init)["MODEL_DIR"] == model_dir
    script = init["command"][-1]
    if store == "s3":
        assert "aws s3 sync" in script and "s3://models/models/a/v1" in script
        assert env_of(init)["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "s3-creds"
        assert next(v for v in spec["volumes"] if v["name"] == "models")["emptyDir"]
    else:
        assert "config.json" in script and "safetensors" in script
        assert next(v for v in spec["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["readOnly"] is True


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_every_container_is_hardened_and_sized(profile):
    for owner, spec in pod_specs(manifests(_values(profile))):
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, owner["metadata"]["name"]
        assert pod_ctx.get("runAsUser", 0) > 0
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in containers(spec):
            where = f"{owner['metadata']['name']}/{c['name']}"
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert ctx.get("privileged", False) is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), where


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_long_running_containers_have_probes(profile):
    for owner, spec in pod_specs(manifests(_values(profile))):
        if owner["kind"] in ("Job", "Pod"):
            continue
        for c in spec["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{owner['metadata']['name']}/{c['name']}"


def test_grpc_services_use_native_grpc_probes_and_the_gateway_its_health_routes():
    docs = manifests()
    for d in by_kind(docs, "Deployment"):
        c = d["spec"]["template"]["spec"]["containers"][0]
        if component(d) == "gateway":
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        else:
            port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == port, (component(d), probe)
            assert env_of(c)[f"LLMSVC_{component(d).upper()}_METRICS_PORT"] == "9090"


def test_termination_grace_covers_each_service_drain():
    values = PROFILES["default"]
    for d in by_kind(manifests(values), "Deployment"):
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        drain = float(env_of(c)[f"LLMSVC_{component(d).upper()}_GRACE_S"])
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert spec["terminationGracePeriodSeconds"] > drain + sleep, d["metadata"]["name"]
    grace = {component(d): d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
             for d in by_kind(manifests(values), "Deployment")}
    # Streams drain at the worker: it gets the longest time.
    assert grace["worker"] == max(grace.values())


def _rules(docs: list[dict], name: str) -> list[dict]:
    return next(r for r in by_kind(docs, "Role") if r["metadata"]["name"] == name)["rules"]


def test_trainer_role_grants_only_jobs_and_services():
    docs = manifests()
    granted = {(g, r, v) for rule in _rules(docs, "llmsvc-trainer")
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    allowed = {(g, r, v) for g, r in (("batch", "jobs"), ("", "services"))
               for v in ("get", "list", "watch", "create", "delete")}
    assert granted <= allowed
    assert ("batch", "jobs", "create") in granted and ("", "services", "create") in granted
    binding = next(b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "llmsvc-trainer")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmsvc-trainer", "namespace": "llmsvc"}]


def test_router_role_reads_endpointslices_and_manages_deployments_for_versions_on_demand():
    rules = _rules(manifests(), "llmsvc-router")
    assert rules == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                      "verbs": ["get", "list", "watch"]},
                     {"apiGroups": ["apps"], "resources": ["deployments"],
                      "verbs": ["get", "create", "patch", "delete"]}]
    off = _rules(manifests({"router": {"ondemand": {"enabled": False}}}), "llmsvc-router")
    assert off == rules[:1]


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_no_cluster_wide_rights_and_api_tokens_only_where_needed(profile):
    docs = manifests(_values(profile))
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    for owner, spec in pod_specs(docs):
        wants_api = pod_labels(owner).get("app.kubernetes.io/component") in ("router", "trainer")
        assert spec.get("automountServiceAccountToken") is wants_api, owner["metadata"]["name"]
    for role in by_kind(docs, "Role"):
        assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
