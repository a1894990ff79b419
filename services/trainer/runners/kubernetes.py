"""Jobs as Kubernetes Indexed Jobs, created and followed through the ``kubernetes`` client.

The client is synchronous; each call runs in a thread. The job's spec, events
and checkpoints lie on the model-store PVC, which this service mounts at the
same path as the pods, so the supervisor reads the events as for a local job.
"""

from __future__ import annotations

import asyncio
import logging

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from . import k8s_objects
from .base import Launch, Runner, RunState

log = logging.getLogger(__name__)


def _parse_quantity_gib(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, mult in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * mult
    return float(value)


class KubernetesRunner(Runner):
    name = "kubernetes"
    supports_nodes = True

    def __init__(self, api_client: k8s.ApiClient, cfg, *, store_path: str, module: str, grace_s: float) -> None:
        self.cfg, self.store_path, self.module, self.grace_s = cfg, store_path, module, grace_s
        self.default_nproc = max(1, cfg.gpus_per_node)
        self.batch = k8s.BatchV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)

    @classmethod
    def from_settings(cls, settings) -> KubernetesRunner:
        from kubernetes import config as kube_config

        if settings.k8s.in_cluster:
            kube_config.load_incluster_config()
        else:
            kube_config.load_kube_config()
        return cls(k8s.ApiClient(), settings.k8s, store_path=str(settings.model_store),
                   module=settings.trainer_module, grace_s=settings.cancel_grace_s)

    def objects(self, launch: Launch) -> tuple[dict, dict]:
        job = k8s_objects.indexed_job(launch, self.cfg, store_path=self.store_path, module=self.module,
                                      grace_s=self.grace_s)
        svc = k8s_objects.headless_service(launch.job_id, self.cfg.namespace, self.cfg.rdzv_port)
        return job, svc

    async def start(self, launch: Launch) -> str:
        job, svc = self.objects(launch)
        ns = self.cfg.namespace
        for create, body in ((self.core.create_namespaced_service, svc), (self.batch.create_namespaced_job, job)):
            try:
                await asyncio.to_thread(create, ns, body)
            except ApiException as exc:
                if exc.status != 409:  # 409: it exists already (this service restarted mid-launch)
                    raise
        log.info("job %s created as Kubernetes Job %s/%s", launch.job_id, ns, job["metadata"]["name"])
        return job["metadata"]["name"]

    async def state(self, job_id: str, handle: str) -> RunState:
        try:
            # The Job itself carries its status: `get` on jobs is what the chart's Role grants (jobs/status,
            # a subresource, is not, and a read of it would be refused in a cluster).
            job = await asyncio.to_thread(self.batch.read_namespaced_job, handle, self.cfg.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return RunState("gone", "the Kubernetes Job no longer exists")
            raise
        for cond in (job.status and job.status.conditions) or []:
            if cond.status != "True":
                continue
            if cond.type == "Complete":
                return RunState("succeeded")
            if cond.type == "Failed":
                failed = job.status.failed or 0
                return RunState("failed", f"the Kubernetes Job failed ({cond.reason}: {cond.message or ''}; "
                                          f"{failed} pod(s) failed)".replace(": ;", ";"))
        return RunState("running")

    async def stop(self, job_id: str, handle: str) -> None:
        # Foreground: the Job stays visible until its pods have exited (after checkpointing on SIGTERM).
        body = k8s.V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=int(self.grace_s))
        try:
            await asyncio.to_thread(self.batch.delete_namespaced_job, handle, self.cfg.namespace, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def cleanup(self, job_id: str, handle: str) -> None:
        try:
            await asyncio.to_thread(self.core.delete_namespaced_service, handle, self.cfg.namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete Service %s: %s", handle, exc.reason)

    def memory_budget(self) -> tuple[float, bool]:
        if self.cfg.gpus_per_node:
            return self.cfg.gpu_memory_gib * 1024**3, True
        return _parse_quantity_gib(self.cfg.memory), False
