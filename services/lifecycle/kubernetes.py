"""Promotion in a cluster: a rolling update of the alias's worker Deployment.

The chart runs one Deployment per served model with ``strategy.rollingUpdate``
``maxUnavailable: 0, maxSurge: 1``. Pointing its pod template at the new
version (model path, served name, aliases) makes Kubernetes start a new pod,
wait for its readiness probe (the gRPC health check turns SERVING only once
the engine is up), add it to the Service's EndpointSlice, which the router
watches, and only then terminate an old pod. The old pod gets SIGTERM,
drains (NOT_SERVING, in-flight streams finish within the grace period), and
leaves the EndpointSlice, so the router stops routing to it first.

Not exercised against a real API server here (none runs on this machine);
the patch body is tested as data.
"""

from __future__ import annotations

import asyncio
import json


def deployment_patch(*, alias: str, version: str, model_dir: str, container: str = "worker") -> dict:
    """A strategic-merge patch: containers and env entries merge by ``name``."""
    env = [
        {"name": "LLMSVC_WORKER_MODEL", "value": model_dir},
        {"name": "LLMSVC_WORKER_SERVED_MODEL_NAME", "value": version},
        {"name": "LLMSVC_WORKER_MODEL_ALIASES", "value": json.dumps([alias])},
    ]
    return {
        "metadata": {"annotations": {"llmsvc.io/promoted-version": version}},
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"annotations": {"llmsvc.io/model-version": version}},
                "spec": {"containers": [{"name": container, "env": env}]},
            },
        },
    }


class KubernetesRollout:
    def __init__(self, namespace: str, deployment: str, api=None) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self._api = api

    def _apps(self):
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.AppsV1Api()
        return self._api

    async def apply(self, alias: str, version: str, path: str | None) -> dict:
        if not path:
            raise ValueError(f"{version} has no model store path")
        body = deployment_patch(alias=alias, version=version, model_dir=path)
        await asyncio.to_thread(self._apps().patch_namespaced_deployment, self.deployment, self.namespace, body)
        return {"serving": [f"deployment/{self.deployment}"], "drained": []}
