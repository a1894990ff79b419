"""Router configuration (env prefix ``LLMSVC_ROUTER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_ROUTER_", extra="ignore")

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50052
    """gRPC port."""
    workers: list[str] = Field(default_factory=list)
    """Static worker addresses (``host:port``), as a JSON list."""
    poll_interval_s: float = 0.5
    """Seconds between health/load polls of each worker."""
    poll_timeout_s: float = 2.0
    """A worker that does not answer a poll within this time is ejected."""
    max_attempts: int = 2
    """Tries per request when a worker fails before its first token (1 = no retry)."""
