"""Auth tables: API keys (hashed) and the usage ledger.

Keys are found by their short public ``prefix`` (unique index) and checked by
comparing the SHA-256 of the whole secret in constant time; the secret itself
is never stored. Usage rows are written once per admitted request, idempotent
on ``reservation_id`` (allocated by auth at admission, so a client that reuses
its ``X-Request-Id`` cannot make two requests collapse into one record).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, JSONType, UTCDateTime, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("rpm > 0", name="rpm_positive"),
        CheckConstraint("tpm > 0", name="tpm_positive"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    """Opaque id used by admin calls and usage rows (``bootstrap`` for the key of ``llmsvc up``)."""
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    """First characters of the secret (``sk-`` + 9), safe to show; the lookup index."""
    secret_hash: Mapped[str] = mapped_column(String(64))
    """Hex SHA-256 of the whole secret."""
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    """Owner or team, free text; keys can be listed by it."""
    scopes: Mapped[list] = mapped_column(JSONType, default=list)
    """Subset of ``chat``, ``train``, ``eval``, ``admin``, and ``batch`` (its generations queue as batch work)."""
    allowed_models: Mapped[list] = mapped_column(JSONType, default=list)
    """Model names this key may use; empty means every model."""
    rpm: Mapped[int] = mapped_column(Integer)
    """Requests per sliding 60 s window."""
    tpm: Mapped[int] = mapped_column(BigInteger)
    """Prompt + completion tokens per sliding 60 s window."""
    daily_token_quota: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Tokens per UTC day; NULL means no quota."""
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Requests in flight at once; NULL means no cap."""
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """Refreshed at most once a minute per auth replica, off the request path."""


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        # Per-key summaries scan one key's rows in a time range.
        Index("ix_usage_records_key_id_created_at", "key_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    reservation_id: Mapped[str] = mapped_column(String(64), unique=True)
    """Idempotency key: one row per admission, however often ReportUsage is retried or replayed."""
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    """The ``X-Request-Id`` the client saw, for support look-ups."""
    key_id: Mapped[str] = mapped_column(String(36))
    model: Mapped[str] = mapped_column(String(200), default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    """``ok``, ``cancelled`` or ``error``."""
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    """When the request finished; the retention job deletes by it."""
