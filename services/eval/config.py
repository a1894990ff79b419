"""Eval service configuration (env prefix ``LLMSVC_EVAL_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings
from services.common.db.engine import default_database_url

DATA_DIR = Path(__file__).resolve().parent / "data"


def _home() -> Path:
    return Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc"))


class EvalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_EVAL_", extra="ignore")

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50054
    """gRPC port."""
    router_addr: str = "127.0.0.1:50052"
    """gRPC address of the router: every built-in suite sends its requests there, like user traffic."""
    gateway_url: str = "http://127.0.0.1:8000"
    """Base URL of the gateway (no ``/v1``): the lm-evaluation-harness backend calls its HTTP API."""
    api_key: str = ""
    """Key the harness backend sends to the gateway (an ``eval``-scoped key in a cluster)."""
    database_url: str = Field(default_factory=default_database_url)
    """Where runs and results live (``$LLMSVC_DATABASE_URL`` or the embedded SQLite file)."""
    data_dirs: list[Path] = Field(default_factory=list)
    """Extra folders suites may read datasets from, besides the built-in ``services/eval/data``."""
    concurrency: int = 4
    """Requests one run keeps in flight; results do not depend on it at temperature 0."""
    max_active_runs_per_owner: int = 4
    """Eval runs one owner (team) may have queued or running; one more is a 429 ``too_many_active_runs``.
    Admin keys are not bound by it."""
    request_timeout_s: float = 120.0
    """Deadline of one scoring or generation request."""
    serve_timeout_s: float = 300.0
    """How long a run (or a rollout) waits for the router to make a version routable (it starts a registered
    version no worker serves)."""
    harness_timeout_s: float = 1800.0
    """Upper bound for one lm-evaluation-harness subprocess."""
    home: Path = Field(default_factory=_home)
    """State folder: logs of launched workers and harness outputs."""

    # -- promotion -----------------------------------------------------------------
    gate: list[dict] = Field(default_factory=lambda: [
        {"suite": "perplexity", "metric": "perplexity", "params": {"dataset": "heldout.txt"},
         "threshold": 100000.0, "tolerance": 0.02},
    ])
    """Required suites of the promotion gate as JSON: ``suite``, ``metric``, ``params``, an absolute
    ``threshold`` (a ceiling for lower-is-better metrics, a floor otherwise) and a relative ``tolerance``
    of regression against the alias's current version. The default's ceiling only refuses a broken model
    (NaN, infinite or exploded perplexity): the built-in tiny-chat, trained on its own tasks and not on prose,
    has a perplexity near 2,200 on ``heldout.txt``, so a lower ceiling would refuse every promotion on a fresh
    ``llmsvc up``. Set a ceiling your own models should meet."""
    rollout: Literal["embedded", "ondemand", "kubernetes", "none"] = "embedded"
    """How workers follow a promotion: move aliases between local workers (``embedded``); have the router
    serve the version, which it starts on demand, and follow the registry's alias (``ondemand``: the chart's,
    with worker Deployments started by the router); patch one fixed worker Deployment (``kubernetes``, a
    rolling update); or only move the alias in the registry (``none``)."""
    k8s_namespace: str = "default"
    """Namespace of the worker Deployment (``rollout=kubernetes``)."""
    k8s_deployment: str = "llmsvc-worker"
    """Name of the worker Deployment (``rollout=kubernetes``)."""

    def all_data_dirs(self) -> list[Path]:
        return [DATA_DIR, *self.data_dirs]
