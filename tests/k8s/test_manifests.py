"""The plain manifests in k8s/ (for ``kubectl apply -f``) validate against the Kubernetes schemas,
and the training Jobs are wired for torchrun on the GPU pool with specs the trainer accepts."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from trainer.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.31.0"  # the version tests/chart pins too
FILES = sorted((ROOT / "k8s").rglob("*.yaml"))
TRAINING = ["pretrain", "sft", "lora"]


def _docs(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((ROOT / "k8s" / name).read_text()) if d}


def test_the_manifests_exist():
    names = {str(f.relative_to(ROOT / "k8s")) for f in FILES}
    assert {"namespace.yaml", "jobs/pretrain.yaml", "jobs/sft.yaml", "jobs/lora.yaml", "jobs/eval.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_object_validates(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "llmsvc"


@pytest.mark.parametrize("name", TRAINING)
def test_training_job_is_an_indexed_torchrun_job_on_the_gpu_pool(name):
    docs = _docs(f"jobs/{name}.yaml")
    job, svc, spec_map = docs["Job"], docs["Service"], docs["ConfigMap"]
    js, pod = job["spec"], job["spec"]["template"]["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == js["parallelism"] >= 1
    assert js["backoffLimit"] >= 1
    # Rendezvous: a headless Service named as the pods' subdomain, rank 0 as the endpoint.
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    (c,) = pod["containers"]
    script = c["command"][-1]
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert f"--nnodes={js['completions']}" in script and f"--nproc_per_node={gpus}" in script
    assert '--node_rank="$JOB_COMPLETION_INDEX"' in script
    assert f"--rdzv_endpoint={job['metadata']['name']}-0.{svc['metadata']['name']}:29500" in script
    assert "-m trainer.run --spec /spec/spec.json" in script
    # GPU pool placement and the model store.
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "llmsvc-models"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["spec"]["configMap"]["name"] == spec_map["metadata"]["name"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/spec", "/dev/shm"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and pod["securityContext"]["runAsNonRoot"]


@pytest.mark.parametrize("name", TRAINING)
def test_training_spec_is_one_the_trainer_accepts(name):
    spec = parse_spec(json.loads(_docs(f"jobs/{name}.yaml")["ConfigMap"]["data"]["spec.json"]))
    assert spec.recipe == name
    assert spec.output_dir.startswith("/models/") and spec.checkpoint_dir.startswith("/models/.jobs/")
    assert spec.resume and spec.checkpoint_every > 0


def test_eval_job_asks_the_eval_service_and_is_let_through():
    docs = _docs("jobs/eval.yaml")
    pod = docs["Job"]["spec"]["template"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["EVAL_ADDR"] == "llmsvc-eval:50054"
    json.loads(env["PARAMS"])
    script = pod["spec"]["containers"][0]["command"][-1]
    compile(script, "eval-job", "exec")
    assert "CreateRun" in script and "GetRun" in script
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "eval"
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": 50054, "protocol": "TCP"}]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [{"llmsvc.io/eval-client": "true"}]
    assert pod["metadata"]["labels"]["llmsvc.io/eval-client"] == "true"


def test_namespace_comes_with_quota_and_limits():
    docs = _docs("namespace.yaml")
    assert docs["Namespace"]["metadata"]["name"] == "llmsvc"
    assert "requests.nvidia.com/gpu" in docs["ResourceQuota"]["spec"]["hard"]
    container = next(lim for lim in docs["LimitRange"]["spec"]["limits"] if lim["type"] == "Container")
    assert container["default"] and container["defaultRequest"]
