"""The Kubernetes runner: the Indexed Job and headless Service it builds, and the API calls it makes.

The objects are checked against the Kubernetes schemas with kubernetes-validate. No API server runs
here, so the runner's real ``kubernetes`` client talks to a fake API server (tests/trainer_service/
fake_k8s.py) that answers like the real one and records every request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import kubernetes_validate
import pytest

from services.trainer.config import KubernetesSettings
from services.trainer.runners import Launch
from services.trainer.runners.k8s_objects import INDEX_ANNOTATION
from services.trainer.runners.kubernetes import KubernetesRunner

from .fake_k8s import RECORDED, FakeKubernetesAPI

K8S_VERSION = "1.31.0"  # the version tests/chart and tests/k8s pin
STORE = "/models"
JOB_ID = "ftjob-0123456789abcdef01234567"


def launch(nodes: int = 2) -> Launch:
    root = Path(STORE) / ".jobs" / JOB_ID
    return Launch(JOB_ID, root / "spec.json", root / "events.jsonl", root / "train.log", nodes=nodes)


def k8s_settings(**kw) -> KubernetesSettings:
    return KubernetesSettings(namespace="llmsvc", image="ghcr.io/llmsvc/llmsvc-trainer-cuda:0.1.0",
                              gpus_per_node=8, **kw)


@pytest.fixture
def api():
    fake = FakeKubernetesAPI()
    yield fake
    fake.close()
    assert not fake.refused, f"calls the chart's RBAC does not grant: {fake.refused}"


def runner_for(api: FakeKubernetesAPI, **kw) -> KubernetesRunner:
    return KubernetesRunner(api.api_client(), k8s_settings(**kw), store_path=STORE, module="trainer.run", grace_s=120)


@pytest.mark.parametrize("nodes,gpus", [(1, 0), (2, 8), (4, 1)])
def test_objects_validate_against_the_kubernetes_schemas(nodes, gpus):
    r = KubernetesRunner(None, k8s_settings().model_copy(update={"gpus_per_node": gpus}), store_path=STORE,
                         module="trainer.run", grace_s=120)
    job, svc = r.objects(launch(nodes))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    kubernetes_validate.validate(svc, K8S_VERSION, strict=True)


def test_rendezvous_wiring():
    r = KubernetesRunner(None, k8s_settings(), store_path=STORE, module="trainer.run", grace_s=120)
    job, svc = r.objects(launch(nodes=2))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    name = job["metadata"]["name"]
    # One pod per node, each with a stable index that becomes its torchrun node rank.
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert "--nnodes=2" in args and "--node-rank=$(NODE_RANK)" in args and "--nproc-per-node=8" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{INDEX_ANNOTATION}']"
    # Rank 0's pod hosts the store: <job>-0 is its hostname, <svc> the subdomain the headless Service serves.
    assert "--rdzv-backend=static" in args
    assert f"--rdzv-endpoint={name}-0.{svc['metadata']['name']}.llmsvc.svc:29500" in args
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 29500
    # The trainer's entry point with the spec and events on the mounted store.
    assert args[args.index("-m") + 1] == "trainer.run"
    assert args[args.index("--spec") + 1] == f"{STORE}/.jobs/{JOB_ID}/spec.json"
    assert args[args.index("--events") + 1] == f"{STORE}/.jobs/{JOB_ID}/events.jsonl"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["model-store"] == STORE
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == "llmsvc-model-store"
    # GPUs: the pool's node selector and taint toleration, one GPU per torchrun process.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # Restarts replace pods (counted by backoffLimit); SIGTERM leaves time to checkpoint.
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] == 3
    assert pod["terminationGracePeriodSeconds"] == 120


def test_cpu_jobs_have_no_gpu_placement():
    r = KubernetesRunner(None, k8s_settings().model_copy(update={"gpus_per_node": 0}), store_path=STORE,
                         module="trainer.run", grace_s=120)
    job, _ = r.objects(launch(nodes=1))
    pod = job["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "--nproc-per-node=1" in pod["containers"][0]["args"]


async def test_start_follow_and_cleanup_through_the_api(api):
    runner = runner_for(api)
    name = await runner.start(launch(nodes=2))
    assert api.calls() == [("POST", "/api/v1/namespaces/llmsvc/services"),
                           ("POST", "/apis/batch/v1/namespaces/llmsvc/jobs")]
    for req in api.requests:  # what the client sent is a valid object
        kubernetes_validate.validate(req.body, K8S_VERSION, strict=True)
    api.statuses[name] = [RECORDED["running"], RECORDED["succeeded"]]
    assert (await runner.state(JOB_ID, name)).phase == "running"
    assert (await runner.state(JOB_ID, name)).phase == "succeeded"
    assert api.calls()[-1] == ("GET", f"/apis/batch/v1/namespaces/llmsvc/jobs/{name}")
    await runner.cleanup(JOB_ID, name)
    assert api.calls()[-1] == ("DELETE", f"/api/v1/namespaces/llmsvc/services/{name}")


async def test_a_restarted_service_starts_the_same_job_again_without_error(api):
    runner = runner_for(api)
    first = await runner.start(launch())
    again = await runner.start(launch())  # both objects exist: 409 AlreadyExists is fine
    assert first == again and len(api.requests) == 4 and len(api.objects) == 2


async def test_failure_is_reported_only_once_the_job_has_failed(api):
    runner = runner_for(api)
    name = await runner.start(launch())
    api.statuses[name] = [RECORDED["failing"], RECORDED["failed"]]
    assert (await runner.state(JOB_ID, name)).phase == "running"  # FailureTarget: pods still terminating
    state = await runner.state(JOB_ID, name)
    assert state.phase == "failed" and "BackoffLimitExceeded" in state.message and "4 pod(s)" in state.message


async def test_stop_deletes_in_the_foreground_then_the_job_is_gone(api):
    runner = runner_for(api)
    name = await runner.start(launch())
    await runner.stop(JOB_ID, name)
    delete = api.requests[-1]
    assert (delete.method, delete.path) == ("DELETE", f"/apis/batch/v1/namespaces/llmsvc/jobs/{name}")
    assert delete.body["propagationPolicy"] == "Foreground" and delete.body["gracePeriodSeconds"] == 120
    assert (await runner.state(JOB_ID, name)).phase == "running"  # pods are checkpointing
    api.finish_deletion(name)
    assert (await runner.state(JOB_ID, name)).phase == "gone"
    await runner.stop(JOB_ID, name)  # stopping a job that is gone is not an error


async def test_the_fake_api_refuses_what_the_charts_role_does_not_grant(api):
    """The fake is as strict as a real API server: reading ``jobs/status`` (what the runner once did, so that
    in a cluster every job stayed ``running``), touching pods, or acting outside the namespace is a 403."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    client = api.api_client()
    batch, core = k8s.BatchV1Api(client), k8s.CoreV1Api(client)
    for call in (lambda: batch.read_namespaced_job_status("x", "llmsvc"),
                 lambda: core.list_namespaced_pod("llmsvc"),
                 lambda: batch.list_namespaced_job("kube-system")):
        with pytest.raises(ApiException) as err:
            await asyncio.to_thread(call)
        assert err.value.status == 403 and "forbidden" in err.value.body
    anonymous = k8s.BatchV1Api(k8s.ApiClient(k8s.Configuration(host=client.configuration.host)))
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(anonymous.list_namespaced_job, "llmsvc")
    assert err.value.status == 401
    assert len(api.refused) == 4
    api.refused.clear()  # refused on purpose (the fixture checks every other test made none)
