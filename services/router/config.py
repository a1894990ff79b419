"""Router configuration (env prefix ``LLMSVC_ROUTER_``)."""

from __future__ import annotations

import math
import os
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings

KV_AWARE_SCORERS = ("prefix", "queue", "kv", "adapter")
# A full prefix match outweighs a queue difference until the holder's queue + 1 is 3× the idlest's
# (queue weight / (queue weight - prefix weight)); a fuller KV cache on the holder tips it sooner.
# A worker holding the request's LoRA adapter weighs as a full prefix match does: a cold adapter load costs
# about what a long prefill does, so the same bound applies before a second worker loads it.
KV_AWARE_WEIGHTS = {"prefix": 2.0, "queue": 3.0, "kv": 1.0, "adapter": 2.0}


def check_kv_aware_weights(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` if every name is a scorer and every weight finite and >= 0 (and one > 0), else ValueError."""
    unknown = sorted(set(weights) - set(KV_AWARE_SCORERS))
    if unknown:
        raise ValueError(f"unknown kv_aware scorer(s) {unknown}; choose from {list(KV_AWARE_SCORERS)}")
    bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"kv_aware weights must be finite and >= 0; got {bad}")
    if not any(weights.values()):
        raise ValueError("kv_aware needs at least one scorer with a weight above 0")
    return weights


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
    database_url: str = Field(default_factory=lambda: os.environ.get("LLMSVC_DATABASE_URL", ""))
    """The model registry (the shared database; else ``$LLMSVC_DATABASE_URL``): LoRA adapter versions there are
    routed to a worker of their base. Empty: adapters are not served, only the workers' own names."""
    adapter_cache_ttl_s: float = Field(2.0, gt=0)
    """Seconds an adapter lookup (or a miss) is cached; an alias moved in the registry is seen within it."""
    policy: Literal["round_robin", "least_load", "session", "prefix_aware", "kv_aware"] = "kv_aware"
    """Default routing policy for every model (``kv_aware``: weighted prefix, queue and KV-cache scores; it had
    the best prefix hit rate and TTFT p50 of the policies on the prefill-heavy runs in docs/benchmarks.md)."""
    model_policies: dict[str, str] = Field(default_factory=dict)
    """Per-model overrides of ``policy`` as a JSON map, e.g. ``{"tiny-chat": "session"}``."""
    multiplex: bool = True
    """Send a worker's streams over one ``GenerateMany`` call when it offers one (one message per engine step
    for all its requests, not one per request); false: one Generate call per request, as older workers need."""
    max_attempts: int = 2
    """Tries per request when a worker fails before its first token (1 = no retry)."""
    prefix_chunk_chars: int = 128
    """Characters (or token ids) per hashed chunk of the prompt in the prefix index (``prefix_aware``, ``kv_aware``)."""
    prefix_max_chunks: int = 50_000
    """Chunk keys the prefix index keeps per model before evicting the least recently used (~150 B each)."""
    prefix_balance_abs: float = 4.0
    """Prefix routing yields to least-load when the chosen worker has this many more requests than the idlest …"""
    prefix_balance_rel: float = 1.5
    """… and more than this multiple of the idlest worker's load."""
    kv_aware_weights: dict[str, float] = Field(default_factory=lambda: dict(KV_AWARE_WEIGHTS))
    """``kv_aware`` scorer weights as a JSON map (``prefix``, ``queue``, ``kv``); a scorer left out is unused."""
    kv_aware_saturation: float = Field(0.95, ge=0.0, le=1.0)
    """KV-cache usage (0..1) above which ``kv_aware`` avoids a worker, unless every candidate is above it."""

    # -- versions served on demand ----------------------------------------------------
    ondemand: Literal["none", "slots", "kubernetes"] = "none"
    """How a registered full version that no worker serves is started when a request names it: on a free worker
    slot as a child process (``slots``, what ``llmsvc up`` uses), as a worker Deployment copied from
    ``ondemand_template`` (``kubernetes``), or not at all (``none``: such a request is a 404)."""
    worker_slots: list[str] = Field(default_factory=list)
    """``slots``: addresses a started worker may listen on, as a JSON list; they must be among ``workers`` so
    the router polls them (a running worker's address is a slot once it has exited)."""
    worker_slot_cpus: list[str] = Field(default_factory=list)
    """``slots``: ``VLLM_CPU_OMP_THREADS_BIND`` for a worker started on each slot (same order; "" or missing:
    vLLM's default)."""
    worker_env: dict[str, str] = Field(default_factory=dict)
    """``slots``: environment every started worker gets (``LLMSVC_WORKER_*``, ``VLLM_*``) as a JSON map."""
    logs_dir: str = ""
    """``slots``: folder for the started workers' logs (``worker-<version>.log``); empty: the working folder."""
    ondemand_template: str = ""
    """``kubernetes``: the worker Deployment (in ``k8s_namespace``) copied for each version started on demand;
    the chart names its first model's."""
    ondemand_max_versions: int = Field(2, ge=1)
    """Versions running on demand at once; to start another, the least recently used idle one is stopped."""
    load_wait_s: float = Field(60.0, ge=0)
    """How long a request waits for its version to start before it gets 503 ``model_loading`` (the start goes
    on; never longer than the request's own deadline)."""
    idle_stop_s: float = Field(900.0, gt=0)
    """A version started on demand with no request for this long is stopped (unless an alias points at it)."""
    start_timeout_s: float = Field(600.0, gt=0)
    """A started worker not ready within this time counts as failed."""

    # -- backpressure ------------------------------------------------------------
    max_in_flight_per_worker: int = 64
    """Requests the router sends one worker at once; beyond, requests queue in the router."""
    queue_size: int = 256
    """Requests that may wait per model; past it a request is refused with RESOURCE_EXHAUSTED at once."""
    queue_timeout_s: float = 30.0
    """Longest wait in the queue before a request is refused (never longer than its own deadline)."""
    batch_queue_share: float = 0.5
    """Fraction of ``queue_size`` batch-priority requests may fill, so interactive ones keep headroom."""

    @field_validator("kv_aware_weights")
    @classmethod
    def _known_scorers(cls, weights: dict[str, float]) -> dict[str, float]:
        return check_kv_aware_weights(weights)
