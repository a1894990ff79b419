"""Auth configuration (env prefix ``LLMSVC_AUTH_``)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_AUTH_", extra="ignore")

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50051
    """gRPC port."""
    api_key: SecretStr
    """The bootstrap key accepted by the service (set by ``llmsvc up``)."""
