"""The Kubernetes objects of one training job: an Indexed Job and its headless Service.

Rendezvous: every pod runs ``torchrun --nnodes N --node-rank $(NODE_RANK)
--rdzv-backend static --rdzv-endpoint <job>-0.<job>.<ns>.svc:29500``. NODE_RANK
is the pod's completion index (0 … N-1, from the Job controller's annotation);
the pod of index 0 hosts the rendezvous store. Its DNS name exists because the
pods set ``subdomain`` to the headless Service, which publishes addresses
before pods are ready (``publishNotReadyAddresses``), so that no node waits on
a name that only appears once training is already running.

Restarts: a failed pod is replaced (up to ``backoffLimit``); the spec has
``resume: true`` and its checkpoint folder lies on the store PVC, so the new
pod continues from the last checkpoint.
"""

from __future__ import annotations

from .base import Launch

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def object_name(job_id: str) -> str:
    """DNS-1123 name of the Job and its Service (pod hostnames add ``-<index>``; all stay under 63)."""
    return f"llmsvc-{job_id}".lower()[:50]


def labels(job_id: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "llmsvc-train", "app.kubernetes.io/part-of": "llmsvc",
            "llmsvc.io/job-id": job_id}


def headless_service(job_id: str, namespace: str, port: int) -> dict:
    name = object_name(job_id)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(job_id)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"llmsvc.io/job-id": job_id},
            "ports": [{"name": "rdzv", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def torchrun_args(launch: Launch, namespace: str, port: int, module: str, nproc: int) -> list[str]:
    name = object_name(launch.job_id)
    return [
        f"--nnodes={launch.nodes}",
        f"--nproc-per-node={launch.nproc_per_node or nproc}",
        "--node-rank=$(NODE_RANK)",
        "--rdzv-backend=static",
        f"--rdzv-endpoint={name}-0.{name}.{namespace}.svc:{port}",
        "-m", module, "--spec", str(launch.spec_path), "--events", str(launch.events_path),
    ]


def _container(launch: Launch, cfg, store_path: str, module: str) -> dict:
    limits = {"cpu": cfg.cpu, "memory": cfg.memory}
    if cfg.gpus_per_node:
        limits["nvidia.com/gpu"] = str(cfg.gpus_per_node)
    return {
        "name": "trainer",
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["torchrun"],
        "args": torchrun_args(launch, cfg.namespace, cfg.rdzv_port, module, max(1, cfg.gpus_per_node)),
        "env": [
            {"name": "NODE_RANK",
             "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}},
            {"name": "LLMSVC_JOB_ID", "value": launch.job_id},
            {"name": "LLMSVC_MODEL_STORE", "value": store_path},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
        ],
        # Read-only root: the trainer writes only to the model store, /dev/shm and /tmp (HOME, caches).
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
        "ports": [{"name": "rdzv", "containerPort": cfg.rdzv_port, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": cfg.cpu, "memory": cfg.memory}, "limits": limits},
        "volumeMounts": [{"name": "model-store", "mountPath": store_path}, {"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def indexed_job(launch: Launch, cfg, *, store_path: str, module: str, grace_s: float) -> dict:
    """``cfg`` is :class:`services.trainer.config.KubernetesSettings`."""
    name = object_name(launch.job_id)
    pod_spec = {
        "subdomain": name,
        "restartPolicy": "Never",
        # SIGTERM makes the trainer write a checkpoint before it exits; this is the time it gets.
        "terminationGracePeriodSeconds": int(grace_s),
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(launch, cfg, store_path, module)],
        "volumes": [
            {"name": "model-store", "persistentVolumeClaim": {"claimName": cfg.store_pvc}},
            # NCCL and DataLoader workers share tensors through /dev/shm; the default 64 MiB is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
        ],
    }
    if cfg.gpus_per_node:
        pod_spec["nodeSelector"] = dict(cfg.node_selector)
        pod_spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    if cfg.service_account:
        pod_spec["serviceAccountName"] = cfg.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels(launch.job_id)},
        "spec": {
            "completionMode": "Indexed",
            "completions": launch.nodes,
            "parallelism": launch.nodes,
            "backoffLimit": cfg.backoff_limit,
            "ttlSecondsAfterFinished": cfg.ttl_after_finished_s,
            "template": {"metadata": {"labels": labels(launch.job_id)}, "spec": pod_spec},
        },
    }
