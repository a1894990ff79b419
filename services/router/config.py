"""Router configuration (env prefix ``LLMSVC_ROUTER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_ROUTER_", extra="ignore")

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50052
    """gRPC port."""

    # -- discovery ---------------------------------------------------------------
    discovery: Literal["static", "kubernetes", "dns"] = "static"
    """Where worker addresses come from: ``workers`` (static), EndpointSlices, or DNS of a headless Service."""
    workers: list[str] = Field(default_factory=list)
    """Static worker addresses (``host:port``), as a JSON list."""
    k8s_namespace: str = ""
    """Namespace of the workers' Service; empty reads the pod's own namespace."""
    k8s_service: str = "llmsvc-worker"
    """Name of the workers' (headless) Service whose EndpointSlices are watched."""
    k8s_port_name: str = "grpc"
    """Named port of the EndpointSlice to dial; the first port when no port has this name."""
    dns_name: str = ""
    """``host:port`` of a headless Service resolved for ``dns`` discovery (and as the Kubernetes fallback)."""
    dns_interval_s: float = 5.0
    """Seconds between DNS resolutions."""

    # -- health ------------------------------------------------------------------
    poll_interval_s: float = 0.5
    """Seconds between health/load polls of each worker."""
    poll_timeout_s: float = 2.0
    """A worker that does not answer a poll within this time is ejected."""
    readmit_checks: int = 2
    """Consecutive passing polls an ejected worker needs before it is routable again."""

    # -- routing -----------------------------------------------------------------
    policy: Literal["round_robin", "least_load", "session", "prefix_aware"] = "prefix_aware"
    """Default routing policy for every model."""
    model_policies: dict[str, str] = Field(default_factory=dict)
    """Per-model overrides of ``policy`` as a JSON map, e.g. ``{"tiny-chat": "session"}``."""
    max_attempts: int = 2
    """Tries per request when a worker fails before its first token (1 = no retry)."""
    prefix_chunk_chars: int = 128
    """Characters (or token ids) per hashed chunk of the prompt in the prefix index."""
    prefix_max_chunks: int = 50_000
    """Chunk keys the prefix index keeps per model before evicting the least recently used (~150 B each)."""
    prefix_balance_abs: float = 4.0
    """Prefix routing yields to least-load when the chosen worker has this many more requests than the idlest …"""
    prefix_balance_rel: float = 1.5
    """… and more than this multiple of the idlest worker's load."""

    # -- backpressure ------------------------------------------------------------
    max_in_flight_per_worker: int = 64
    """Requests the router sends one worker at once; beyond, requests queue in the router."""
    queue_size: int = 256
    """Requests that may wait per model; past it a request is refused with RESOURCE_EXHAUSTED at once."""
    queue_timeout_s: float = 30.0
    """Longest wait in the queue before a request is refused (never longer than its own deadline)."""
    batch_queue_share: float = 0.5
    """Fraction of ``queue_size`` batch-priority requests may fill, so interactive ones keep headroom."""
