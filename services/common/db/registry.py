"""The model registry: versions of each model in the store, aliases that point at one, and an audit trail.

A version is a Hugging Face directory under ``<store>/<name>/<version>/``.
Version numbers are allocated per name by the database (unique constraint plus
retry), so concurrent registrations never collide.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, JSONType, UTCDateTime, utcnow


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    """``<name>-v<version>``: the id clients use to address this exact version."""
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    """Location in the model store (folder path or fsspec URL)."""
    parent: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    recipe: Mapped[str] = mapped_column(String(64), default="")
    config: Mapped[dict] = mapped_column(JSONType, default=dict)
    data_hash: Mapped[str] = mapped_column(String(128), default="")
    metrics: Mapped[dict] = mapped_column(JSONType, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner: Mapped[str] = mapped_column(String(200), default="", server_default="", index=True)
    """The owner (team) of the key whose job made it; empty: shared (a base model the operator added)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """The version before the last change, for ``rollback``."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="")
    owner: Mapped[str] = mapped_column(String(200), default="", server_default="")
    """The owner of the version it was made for; empty: shared. Only that owner (or an admin) moves it."""


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    """Key id (or ``system``) that did it."""
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict] = mapped_column(JSONType, default=dict)


def visible(owner: str, viewer_owner: str, admin: bool = False) -> bool:
    """Whether a key of ``viewer_owner`` may see and use what ``owner`` holds (shared: empty owner)."""
    return admin or not owner or owner == viewer_owner


def is_adapter(row: ModelVersion) -> bool:
    """A LoRA adapter version (served by the workers of its ``parent``), not a full model."""
    if isinstance(row.config, dict) and row.config.get("lora_adapter"):
        return True
    return bool(row.path) and (Path(row.path) / "adapter_config.json").is_file()  # rows from before the flag


async def register_version(session: AsyncSession, name: str, path: str, *, parent: str | None = None,
                           recipe: str = "", config: dict | None = None, data_hash: str = "",
                           metrics: dict | None = None, job_id: str | None = None, owner: str = "",
                           attempts: int = 5) -> ModelVersion:
    """Add the next version of ``name``; commits. Retries when another writer took the number."""
    for _ in range(attempts):
        current = await session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
        version = (current or 0) + 1
        row = ModelVersion(id=f"{name}-v{version}", name=name, version=version, path=path, parent=parent,
                           recipe=recipe, config=config or {}, data_hash=data_hash, metrics=metrics or {},
                           job_id=job_id, owner=owner)
        session.add(row)
        try:
            await session.commit()
            return row
        except IntegrityError:
            await session.rollback()
    raise RuntimeError(f"could not allocate a version number for {name!r} after {attempts} attempts")


async def get_version(session: AsyncSession, version_id: str) -> ModelVersion | None:
    return await session.get(ModelVersion, version_id)


async def list_versions(session: AsyncSession, name: str | None = None) -> list[ModelVersion]:
    stmt = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
    if name:
        stmt = stmt.where(ModelVersion.name == name)
    return list(await session.scalars(stmt))


async def resolve_exact(session: AsyncSession, name: str) -> ModelVersion | None:
    """An alias or an exact version id; never a bare name's latest version."""
    alias = await session.get(ModelAlias, name)
    return await session.get(ModelVersion, alias.version_id if alias is not None else name)


async def resolve(session: AsyncSession, name: str) -> ModelVersion | None:
    """An alias, an exact version id, or a bare name (its latest version)."""
    alias = await session.get(ModelAlias, name)
    if alias is not None:
        return await session.get(ModelVersion, alias.version_id)
    exact = await session.get(ModelVersion, name)
    if exact is not None:
        return exact
    return await session.scalar(
        select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version.desc()).limit(1)
    )


async def set_alias(session: AsyncSession, alias: str, version_id: str, *, actor: str, action: str = "promote",
                    details: dict | None = None) -> ModelAlias:
    """Point ``alias`` at ``version_id`` and record who did it; commits."""
    row = await session.get(ModelAlias, alias)
    if row is None:
        target = await session.get(ModelVersion, version_id)
        row = ModelAlias(alias=alias, version_id=version_id, updated_by=actor,
                         owner=target.owner if target is not None else "")
        session.add(row)
    else:
        row.previous_version_id, row.version_id = row.version_id, version_id
        row.updated_at, row.updated_by = utcnow(), actor
    session.add(AuditEvent(actor=actor, action=action, target=alias,
                           details={"version_id": version_id, **(details or {})}))
    await session.commit()
    return row
