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
import logging
import time

log = logging.getLogger(__name__)


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


def apps_api():
    """``AppsV1Api`` with the pod's service account (in a cluster) or the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api()


class KubernetesRollout:
    def __init__(self, namespace: str, deployment: str, api=None) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self._api = api

    def _apps(self):
        if self._api is None:
            self._api = apps_api()
        return self._api

    async def apply(self, alias: str, version: str, path: str | None) -> dict:
        if not path:
            raise ValueError(f"{version} has no model store path")
        body = deployment_patch(alias=alias, version=version, model_dir=path)
        await asyncio.to_thread(self._apps().patch_namespaced_deployment, self.deployment, self.namespace, body)
        return {"serving": [f"deployment/{self.deployment}"], "drained": []}


class DeploymentLauncher:
    """Starts a full version no worker serves as its own worker Deployment (the router's on-demand starter in a
    cluster, ``LLMSVC_ROUTER_ONDEMAND=kubernetes``).

    The new Deployment is a copy of the chart's worker Deployment ``template`` (the one the chart renders for
    its first model, read from the API, so resources, GPU pool, probes, volumes and security settings are the
    operator's own) with one replica, its own name and ``llmsvc.io/model`` label, and the version's folder and
    name in the engine's environment and the model-wait init container's. Its pods carry the worker labels, so
    the headless worker Service and its EndpointSlices include them and the router admits them when their
    gRPC health turns SERVING. Stopping deletes the Deployment. The chart's Role lets the router get, create,
    patch and delete Deployments in the release namespace and nothing else.

    Every router replica starts and touches versions; the Deployment's ``llmsvc.io/last-used`` annotation
    (patched at most once a minute by each) is the shared last use that idle stop reads, so one replica does
    not stop what another still serves.
    """

    MODEL_LABEL = "llmsvc.io/model"
    LAST_USED = "llmsvc.io/last-used"

    def __init__(self, template: str, namespace: str, max_versions: int, api=None) -> None:
        self.template, self.namespace, self.max_versions = template, namespace, max_versions
        self._api = api
        self.names: dict[str, str] = {}
        """Version → Deployment name, for those this router started (or found running)."""

    @classmethod
    def from_settings(cls, template: str, namespace: str, max_versions: int) -> DeploymentLauncher:
        if not template:
            raise ValueError("LLMSVC_ROUTER_ONDEMAND=kubernetes needs LLMSVC_ROUTER_ONDEMAND_TEMPLATE: the name of "
                             "the worker Deployment to copy")
        if not namespace:
            try:
                namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read().strip()
            except OSError:
                namespace = "default"
        return cls(template, namespace, max_versions)

    def _apps(self):
        if self._api is None:
            self._api = apps_api()
        return self._api

    def deployment_name(self, version: str) -> str:
        import hashlib
        import re

        slug = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")[:40].strip("-")
        return f"{self.template[:12].rstrip('-')}-od-{slug}-{hashlib.sha1(version.encode()).hexdigest()[:6]}"

    def free(self) -> int:
        return max(0, self.max_versions - len(self.names))

    def manifest(self, template: dict, version: str, path: str) -> dict:
        """The Deployment for ``version``: ``template`` (a Deployment as the API returns it) made its own."""
        import copy

        name = self.deployment_name(version)
        old_path = next((e.get("value") for c in template["spec"]["template"]["spec"]["containers"]
                         for e in c.get("env") or [] if e.get("name") == "LLMSVC_WORKER_MODEL"), None)
        pod = copy.deepcopy(template["spec"]["template"])
        labels = {**(pod["metadata"].get("labels") or {}), self.MODEL_LABEL: name[-63:]}
        pod["metadata"] = {"labels": labels, "annotations": {**(pod["metadata"].get("annotations") or {}),
                                                             "llmsvc.io/model-version": version}}
        own = {"LLMSVC_WORKER_MODEL": path, "MODEL_DIR": path, "LLMSVC_WORKER_SERVED_MODEL_NAME": version,
               "LLMSVC_WORKER_MODEL_ALIASES": "[]", "LLMSVC_WORKER_RUNNER": "generate"}  # a version generates
        for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]:
            for e in c.get("env") or []:
                if e.get("name") in own:
                    e["value"] = own[e["name"]]
                    e.pop("valueFrom", None)
            for kind in ("requests", "limits"):  # quantities are strings in the API's schema
                res = (c.get("resources") or {}).get(kind)
                if res:
                    c["resources"][kind] = {k: str(v) for k, v in res.items()}
            for key in ("command", "args"):  # the S3 fetch names the folder in its command
                if old_path and c.get(key):
                    c[key] = [a.replace(old_path, path) for a in c[key]]
        meta = template["metadata"]
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {**(meta.get("labels") or {}), self.MODEL_LABEL: name[-63:],
                                    "llmsvc.io/on-demand": "true"},
                         "annotations": {"llmsvc.io/model-version": version, "llmsvc.io/copied-from": self.template,
                                         self.LAST_USED: str(int(time.time()))}},
            "spec": {"replicas": 1, "revisionHistoryLimit": 1,
                     "selector": {"matchLabels": {**template["spec"]["selector"]["matchLabels"],
                                                  self.MODEL_LABEL: name[-63:]}},
                     "strategy": template["spec"].get("strategy") or {"type": "RollingUpdate"},
                     "template": pod},
        }

    async def start(self, version: str, path: str) -> None:
        from kubernetes.client.exceptions import ApiException

        from .launcher import LaunchError

        api = self._apps()
        try:
            template = await asyncio.to_thread(api.read_namespaced_deployment, self.template, self.namespace,
                                               _preload_content=False)
            body = self.manifest(json.loads(template.data), version, path)
            await asyncio.to_thread(api.create_namespaced_deployment, self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:  # 409: another router replica created it first; it is starting all the same
                raise LaunchError(f"the Kubernetes API refused the worker Deployment for {version}: "
                                  f"{exc.status} {exc.reason}") from None
        self.names[version] = self.deployment_name(version)

    def failure(self, version: str) -> str | None:
        return None  # a pod that cannot start is retried by Kubernetes; the router's start timeout bounds it

    async def stop(self, version: str) -> None:
        from kubernetes.client.exceptions import ApiException

        name = self.names.pop(version, self.deployment_name(version))
        try:
            await asyncio.to_thread(self._apps().delete_namespaced_deployment, name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def touch(self, version: str) -> None:
        """Record a use on the Deployment, where other router replicas read it (OnDemand calls it at most once
        per ``SHARE_USE_S`` per version)."""
        if version not in self.names:
            return
        patch = {"metadata": {"annotations": {self.LAST_USED: str(int(time.time()))}}}
        try:
            await asyncio.to_thread(self._apps().patch_namespaced_deployment, self.names[version], self.namespace,
                                    patch)
        except Exception as exc:  # a lost touch only makes an idle stop come sooner
            log.warning("could not record a use of %s: %s", version, exc)

    async def last_used(self, version: str) -> float | None:
        """Seconds since the epoch of the last use any router replica recorded, or None if unknown."""
        try:
            dep = await asyncio.to_thread(self._apps().read_namespaced_deployment, self.names.get(
                version, self.deployment_name(version)), self.namespace, _preload_content=False)
            return float(json.loads(dep.data)["metadata"]["annotations"][self.LAST_USED])
        except Exception:
            return None

    def close(self) -> None:
        """Deployments outlive a router replica: another replica (or this one, restarted) serves them."""


