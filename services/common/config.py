"""Typed service configuration read from the environment.

Each service subclasses :class:`ServiceSettings` with its own prefix
(``LLMSVC_GATEWAY_``, ``LLMSVC_WORKER_`` …). In a cluster the variables come
from a ConfigMap or Secret; ``llmsvc up`` sets them for local processes.
"""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_", extra="ignore")

    log_level: str = "INFO"
    """Python logging level name."""
    log_format: Literal["text", "json"] = "text"
    """``text`` for a terminal, ``json`` for log collectors."""
    metrics_port: int = 0
    """Port of the Prometheus ``/metrics`` HTTP server; 0 disables it (the gateway serves its own)."""
    grace_s: float = 10.0
    """Seconds in-flight RPCs may take to finish on SIGTERM before they are cut."""
