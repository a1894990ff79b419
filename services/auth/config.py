"""Auth configuration (env prefix ``LLMSVC_AUTH_``; the database and Redis URLs are shared).

Embedded default: the SQLite file of ``llmsvc db`` and the in-process limiter.
A cluster sets ``LLMSVC_DATABASE_URL`` (PostgreSQL) and ``LLMSVC_REDIS_URL``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


def _default_spool() -> Path:
    return Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc")) / "auth-spool"


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSVC_AUTH_", extra="ignore", populate_by_name=True)

    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50051
    """gRPC port."""
    api_key: SecretStr | None = None
    """Bootstrap admin key (``llmsvc up`` sets it); stored hashed as the key with id ``bootstrap`` at start-up."""
    bootstrap_rpm: int = Field(100_000, gt=0)
    """Requests per minute of the bootstrap key."""
    bootstrap_tpm: int = Field(1_000_000_000, gt=0)
    """Tokens per minute of the bootstrap key."""

    database_url: str = Field("", validation_alias=AliasChoices("LLMSVC_AUTH_DATABASE_URL", "LLMSVC_DATABASE_URL",
                                                                "database_url"))
    """Keys and usage; empty: ``$LLMSVC_HOME/llmsvc.db`` (SQLite)."""
    db_timeout_s: float = 2.0
    """Bound on any one database call; past it the database counts as down."""
    db_retry_s: float = 1.0
    """After a database failure, how long to serve from cache / spool usage before trying it again."""
    redis_url: str = Field("", validation_alias=AliasChoices("LLMSVC_AUTH_REDIS_URL", "LLMSVC_REDIS_URL", "redis_url"))
    """Shared limiter and revocation feed; empty: in-process limiter (exact for one auth replica only)."""
    redis_prefix: str = "llmsvc:auth:"
    """Namespace of every Redis key and channel auth uses (no braces: they mark the Cluster hash tag)."""
    redis_timeout_s: float = 1.0
    """Bound on one limiter call; past it Redis counts as down (then only one probe at a time waits for it)."""
    redis_failure_policy: Literal["closed", "open"] = "closed"
    """While Redis is down: ``closed`` refuses with 503; ``open`` admits under per-replica in-process limits."""
    redis_retry_s: float = 1.0
    """After a Redis failure, how long to apply the policy before trying Redis again."""

    window_s: float = Field(60.0, gt=0)
    """Length of the sliding RPM/TPM window (60: per minute; shorter only in tests)."""
    concurrency_lease_s: float = Field(900.0, gt=0)
    """An admission whose ReportUsage never arrives frees its concurrency slot after this long."""
    key_cache_ttl_s: float = Field(5.0, ge=0)
    """A cached key is re-read after this long: the bound on revocation and expiry changes without Redis."""
    key_cache_stale_s: float = Field(3600.0, ge=0)
    """While the database is down, keys verified within this long keep working."""
    key_cache_max_unknown: int = Field(10_000, ge=1)
    """Unknown key prefixes remembered (for ``key_cache_ttl_s``), apart from the real keys' records: a flood of
    random keys costs one query each per TTL and never evicts a real key from the cache."""

    spool_dir: Path = Field(default_factory=_default_spool)
    """Where usage records wait while the database is down (one append-only file per replica)."""
    replica_id: str = ""
    """Names this replica's spool file; empty: ``<hostname>-<port>``."""
    usage_retention_days: int = Field(90, ge=1)
    """Usage rows older than this are deleted by the retention job."""
    retention_interval_s: float = 3600.0
    """How often the retention job runs."""

    @property
    def replica(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{self.port}"
