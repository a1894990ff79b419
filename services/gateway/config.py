"""Gateway configuration (env prefix ``LLMSVC_GATEWAY_``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


def _default_journal() -> Path:
    return Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc")) / "gateway-usage"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_GATEWAY_", extra="ignore")

    host: str = "0.0.0.0"
    """HTTP bind address."""
    port: int = 8000
    """HTTP port; the API lives under ``/v1``."""
    auth_addr: str = "127.0.0.1:50051"
    """gRPC address of the auth service."""
    router_addr: str = "127.0.0.1:50052"
    """gRPC address of the router."""
    trainer_addr: str = "127.0.0.1:50053"
    """gRPC address of the trainer service."""
    eval_addr: str = "127.0.0.1:50054"
    """gRPC address of the eval service."""
    multiplex: bool = True
    """Send all generations to the router over one ``GenerateMany`` call (one message per batch of tokens of
    all requests, not one per token per request); false: one Generate call per generation."""
    request_timeout_s: float = 600.0
    """Deadline for one generation, propagated to the router and worker over gRPC."""
    auth_timeout_s: float = 5.0
    """Deadline for the auth call; past it the request gets a 503."""
    default_reserve_tokens: int = 1024
    """Completion tokens reserved at admission when the client sets no max_tokens."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body (JSON) the gateway reads; a larger one is refused with 413 before it is parsed or
    its key is checked. It stays well under the gRPC message limit of every hop behind the gateway."""
    body_idle_timeout_s: float = 20.0
    """A request body that sends nothing for this long is cut off with 408 (a slow client, or one holding
    connections open on purpose, cannot tie the gateway up)."""
    max_upload_bytes: int = 512 * 1024 * 1024
    """Largest multipart upload (``POST /v1/files``), as OpenAI's 512 MB; refused with 413 from its
    Content-Length before a byte is read, or as soon as a body sent without one passes it."""
    usage_journal_dir: Path | None = Field(default_factory=_default_journal)
    """Where each finished request's usage report is written before it is sent to auth, so a killed gateway
    loses none (the next gateway to start on this folder sends them); empty: no journal."""
