"""The default model as a registry version: ``tiny-chat-v1`` with the alias ``tiny-chat``.

The first ``llmsvc up`` registers the model it built, so every registry command works on a fresh home
(``llmsvc eval compare tiny-chat-v1 …``, fine-tunes from ``tiny-chat``, promotion of the alias). Later
runs find the version by its folder and register nothing; the alias is created only when it does not
exist, so a promotion that moved it elsewhere survives a restart.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select

from services.common.db import registry
from services.common.db.engine import make_engine, session_factory
from services.common.db.migrate import upgrade

NAME = "tiny-chat"


async def _ensure(db_url: str, path: Path) -> tuple[str, list[str]]:
    engine = make_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            row = await session.scalar(select(registry.ModelVersion).where(registry.ModelVersion.path == str(path)))
            if row is None:
                meta = _meta(path)
                row = await registry.register_version(session, NAME, str(path), recipe=meta.get("recipe", ""),
                                                      config=meta.get("config") or {}, metrics=meta.get("metrics"))
            alias = await session.get(registry.ModelAlias, NAME)
            if alias is None:
                await registry.set_alias(session, NAME, row.id, actor="system", action="register-default")
                return row.id, [NAME]
            return row.id, [NAME] if alias.version_id == row.id else []
    finally:
        await engine.dispose()


def _meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "llmsvc.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def ensure_default_version(db_url: str, path: Path) -> tuple[str, list[str]]:
    """Register ``path`` (the built default model) if it is not yet a version; returns the version id the worker
    serves it as, and the aliases it should answer to (``tiny-chat`` while the alias points at it)."""
    upgrade(db_url)
    return asyncio.run(_ensure(db_url, path))
