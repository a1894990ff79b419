"""Trainer service configuration (env prefix ``LLMSVC_TRAINER_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings
from services.common.db.engine import default_database_url


def _default_store() -> Path:
    home = Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc"))
    return home / "models"


class KubernetesSettings(ServiceSettings):
    """How the Kubernetes runner shapes a training Job (env prefix ``LLMSVC_TRAINER_K8S_``)."""

    model_config = SettingsConfigDict(env_prefix="LLMSVC_TRAINER_K8S_", extra="ignore")

    namespace: str = "default"
    image: str = "llmsvc:latest"
    """Image with the ``trainer`` package; the Job runs ``torchrun -m trainer.run`` in it."""
    store_pvc: str = "llmsvc-model-store"
    """ReadWriteMany PVC holding the model store; mounted at the same path as in this service."""
    gpus_per_node: int = 1
    """``nvidia.com/gpu`` limit per pod, and torchrun's ``--nproc_per_node``; 0 trains on CPU."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU, for the does-it-fit check."""
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    backoff_limit: int = 3
    """Pod restarts before the Job fails; each restart resumes from the last checkpoint."""
    service_account: str = ""
    cpu: str = "4"
    memory: str = "32Gi"
    ttl_after_finished_s: int = 3600
    rdzv_port: int = 29500
    in_cluster: bool = True
    """Use the pod's service account; false reads ``~/.kube/config``."""


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_TRAINER_", extra="ignore", populate_by_name=True)

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50053
    """gRPC port."""
    database_url: str = Field(default_factory=default_database_url,
                              validation_alias=AliasChoices("LLMSVC_TRAINER_DATABASE_URL", "LLMSVC_DATABASE_URL"))
    """SQLAlchemy URL; the embedded SQLite file by default."""
    model_store: Path = Field(default_factory=_default_store,
                              validation_alias=AliasChoices("LLMSVC_TRAINER_MODEL_STORE", "LLMSVC_MODEL_STORE"))
    """Root of the model store: versions live in ``<store>/<name>/<version>/``; uploads and job folders
    in ``<store>/.files`` and ``<store>/.jobs``."""
    data_dirs: list[Path] = Field(default_factory=list)
    """Folders besides the store from which ``training_file`` may name a JSONL path (JSON list)."""
    migrate_on_start: bool = True
    """Apply the Alembic migrations before serving (idempotent)."""
    eval_addr: str = ""
    """The eval service (``host:port``): the suites a job names in ``evals`` run there when it succeeds. Empty:
    a job that names suites is refused."""
    router_addr: str = ""
    """The router (``host:port``): a finished full fine-tune is started there at once, so it answers soon after
    its job succeeds (an adapter needs no start). Empty: its first request starts it."""
    runner: Literal["local", "kubernetes"] = "local"
    """Where jobs run: a local process (embedded mode) or a Kubernetes Job."""
    max_concurrent_jobs: int = 1
    """Jobs running at once; the rest wait as ``queued``."""
    max_active_jobs_per_owner: int = 4
    """Jobs one owner (team) may have not yet ended (validating, queued or running); one more is a 429
    ``too_many_active_jobs``. Admin keys are not bound by it."""
    max_steps: int = 1_000_000
    """Optimizer steps one job may ask for (or its epochs come to); more is a 400 naming ``hyperparameters``."""
    max_nodes: int = 16
    """Pods one Kubernetes job may ask for (``resources.nodes``)."""
    max_nproc_per_node: int = 8
    """Processes per pod one job may ask for (``resources.nproc_per_node``)."""
    max_job_hours: float = 72.0
    """A job still running this long after it started is stopped (after a checkpoint) and fails with
    ``deadline_exceeded``."""
    python: str = Field(default_factory=lambda: __import__("sys").executable)
    """Interpreter for local jobs (the one with the ``trainer`` package)."""
    trainer_module: str = "trainer.run"
    """Module run as the job's entry point (``python -m`` / ``torchrun -m``)."""
    memory_budget_gib: float = 0.0
    """Memory a local job may use, for the does-it-fit check; 0 means 90% of what is available now."""
    poll_interval_s: float = 0.5
    """How often running jobs' events and states are read."""
    lease_ttl_s: float = 15.0
    """One instance supervises jobs (holds a lease in the database); another takes over this long after
    the holder stops renewing it."""
    cancel_grace_s: float = 60.0
    """Time a job gets after SIGTERM to checkpoint and exit before it is killed."""
    max_upload_mib: int = 512
    """The largest training file an upload may hold."""
    gateway_url: str = ""
    """The gateway's HTTP address (``http://host:port``), to which batches send their requests. Empty: batches
    are refused with 503."""
    batch_concurrency: int = 8
    """Batch requests this instance has in flight at once, across every batch (the router's queue and vLLM's
    scheduler put interactive ones first whatever this is)."""
    max_batch_lines: int = 50_000
    """Requests one batch may hold."""
    max_batch_file_mib: int = 200
    """The largest batch input file an upload may hold."""
    batch_request_timeout_s: float = 600.0
    """How long one batch request may take before it is sent again."""
    k8s: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @property
    def files_dir(self) -> Path:
        return self.model_store / ".files"

    @property
    def jobs_dir(self) -> Path:
        return self.model_store / ".jobs"
