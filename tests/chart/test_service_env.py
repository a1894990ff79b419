"""The environment the chart gives each container is what that service's settings class reads.

Every ``LLMSVC_*`` variable the chart sets must name a field of the service's pydantic settings
(by its prefix or an alias), and the rendered values must validate: the service would start
with this configuration instead of silently ignoring a misspelt variable.
"""

from __future__ import annotations

import pytest

from services.auth.config import AuthSettings
from services.common.config import ServiceSettings
from services.eval.config import EvalSettings
from services.gateway.config import GatewaySettings
from services.router.config import RouterSettings
from services.trainer.config import KubernetesSettings, TrainerSettings
from services.worker.config import WorkerSettings

from .helpers import EVERYTHING, PROFILES, by_kind, component, deep_merge, manifests

SETTINGS = {"gateway": GatewaySettings, "auth": AuthSettings, "router": RouterSettings, "worker": WorkerSettings,
            "trainer": TrainerSettings, "eval": EvalSettings}
# Read outside the settings classes: services.common.db.engine.default_database_url() and
# services.common.identity.IdentityCodec.
SHARED = {"LLMSVC_DATABASE_URL", "LLMSVC_INTERNAL_SECRET"}


def _names(cls: type[ServiceSettings]) -> set[str]:
    prefix = cls.model_config["env_prefix"]
    names = set()
    for field, info in cls.model_fields.items():
        names.add(f"{prefix}{field}".upper())
        alias = info.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            if isinstance(choice, str):
                names.add(choice.upper())
    return names


def _env(container: dict) -> dict[str, str]:
    """Literal values as rendered; values from Secrets get a stand-in of the right shape."""
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            out[e["name"]] = "postgresql+asyncpg://u:p@db/llmsvc" if "DATABASE" in e["name"] else \
                "redis://redis:6379/0" if "REDIS" in e["name"] else "sk-stand-in"
        else:
            out[e["name"]] = "llmsvc"  # fieldRef: the pod's namespace
    return out


@pytest.mark.parametrize("profile", [*sorted(PROFILES), "everything"])
def test_every_variable_is_read_and_valid(profile, monkeypatch):
    values = EVERYTHING if profile == "everything" else PROFILES[profile]
    for d in by_kind(manifests(values), "Deployment"):
        svc = component(d)
        cls = SETTINGS[svc]
        known = _names(cls) | SHARED | (_names(KubernetesSettings) if svc == "trainer" else set())
        env = _env(d["spec"]["template"]["spec"]["containers"][0])
        ours = {k for k in env if k.startswith("LLMSVC_")}
        assert ours - known == set(), f"{d['metadata']['name']} sets variables {svc} does not read"
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = cls()
        assert settings.metrics_port == 9090 or svc == "gateway"
        if svc == "trainer":
            k8s = KubernetesSettings()
            assert settings.runner == "kubernetes" and k8s.namespace == "llmsvc"
            assert k8s.store_pvc == "llmsvc-models" and str(settings.model_store) == "/models"
            # A batch's lines go to the gateway's Service (the network policy lets this edge through).
            assert settings.gateway_url == "http://llmsvc-gateway:8000"
        if svc == "worker":
            assert settings.model.startswith(("/models/", "/model-cache/"))
            assert "enable_chunked_prefill" in settings.engine_args
        if svc == "router":
            assert settings.discovery == "kubernetes" and settings.k8s_service == "llmsvc-worker"
        for name in env:
            monkeypatch.delenv(name)


def test_the_check_catches_a_misspelt_variable():
    assert "LLMSVC_ROUTER_K8S_PORT" not in _names(RouterSettings)
    assert "LLMSVC_ROUTER_K8S_PORT_NAME" in _names(RouterSettings)
    assert "LLMSVC_TRAINER_DATABASE_URL" in _names(TrainerSettings)


def test_only_the_service_pods_hold_the_internal_secret():
    """Internal calls carry a token derived from it and the gateway signs identities with it: every service
    pod gets it, and no job pod (migrations, helm test, training or eval jobs), so none of those can call
    a service or claim to be a user."""
    import base64

    docs = manifests(EVERYTHING | {"trainer": {"enabled": True}, "modelStore": {"type": "pvc"}})
    secrets = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-internal")]
    assert len(secrets) == 1 and len(base64.b64decode(secrets[0]["data"]["secret"])) >= 32
    holders = set()
    for d in by_kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                    if e["name"] == "LLMSVC_INTERNAL_SECRET"]
            if refs:
                assert refs == [secrets[0]["metadata"]["name"]]
                holders.add(component(d))
    assert holders == {"gateway", "auth", "router", "worker", "trainer", "eval"}
    mentioned = [d["kind"] for d in docs if "LLMSVC_INTERNAL_SECRET" in str(d) and d["kind"] != "Deployment"]
    assert mentioned == []  # no Job template or ConfigMap carries it


def test_the_auth_spool_lives_on_a_volume_the_replicas_share():
    """Usage spooled during a database outage outlives its pod: every auth replica mounts one ReadWriteMany
    claim at the spool folder (a live replica adopts a gone one's files, services/auth/usage.py)."""
    docs = manifests({})
    auth = next(d for d in by_kind(docs, "Deployment") if component(d) == "auth")
    spec = auth["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "spool")
    claim = next(c for c in by_kind(docs, "PersistentVolumeClaim")
                 if c["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and auth["spec"]["replicas"] >= 2
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "spool")
    assert env["LLMSVC_AUTH_SPOOL_DIR"] == mount["mountPath"]
    off = manifests({"auth": {"spool": {"persistence": {"enabled": False}}}})
    auth_off = next(d for d in by_kind(off, "Deployment") if component(d) == "auth")
    assert "emptyDir" in next(v for v in auth_off["spec"]["template"]["spec"]["volumes"] if v["name"] == "spool")
    assert not [c for c in by_kind(off, "PersistentVolumeClaim") if "spool" in c["metadata"]["name"]]


def test_an_embedding_model_entry_runs_a_pooling_worker(monkeypatch):
    """A models entry with ``engine.runner: pooling`` (the values.yaml comment's example) renders a worker
    Deployment whose settings say pooling; the chat entry beside it stays a generation worker."""
    values = deep_merge(PROFILES["cpu"], {"workers": {"models": [
        {"name": "tiny-chat", "path": "tiny-chat/v1"},
        {"name": "tiny-chat-embed", "path": "tiny-chat/v1", "engine": {"runner": "pooling", "enableLora": False}}]}})
    runners = {}
    for d in by_kind(manifests(values), "Deployment"):
        if component(d) != "worker":
            continue
        env = _env(d["spec"]["template"]["spec"]["containers"][0])
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = WorkerSettings()
        runners[settings.model_name] = (settings.runner, settings.convert, settings.enable_lora)
        for name in env:
            monkeypatch.delenv(name)
    assert runners == {"tiny-chat": ("generate", "embed", True), "tiny-chat-embed": ("pooling", "embed", False)}
