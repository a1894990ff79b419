"""What the model registry says a model name is: a LoRA adapter version (and of which base), or a full version
the router can start on demand (see :mod:`.ondemand`).

A request's ``model`` may name an adapter version (``teal-v1``) or an alias of
one. The catalog resolves it in the registry (the shared database) and says
where the adapter lives and which base it needs; the router then sends it to a
worker of that base with the adapter attached. Nothing starts and nothing
restarts, so an adapter is served the moment its version is registered, and an
alias moved to an adapter takes effect within ``ttl_s``, even where a worker
still answers to that alias for a full model (the registry is asked first).
Bare names are not resolved here: a fine-tune named like its base must not
take the base's traffic.

Answers are cached for ``ttl_s`` (an alias moved in the registry is seen within
that time), misses too, so a stream of unknown names costs one query per name
per ``ttl_s``; the cache holds at most ``max_entries`` names.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db import registry

log = logging.getLogger(__name__)


def norm_path(path: str) -> str:
    return os.path.realpath(path) if path else ""


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    """Its version id: what vLLM and the response chunks call it."""
    path: str
    """Its folder in the model store."""
    base: str
    """The registry's ``parent``: a version id or a folder, as the trainer recorded it."""
    base_names: frozenset[str]
    """Model names a worker of the base serves (the parent version id, and aliases pointing at it)."""
    base_paths: frozenset[str]
    """The base's folder(s), compared with the folder a worker reports it serves."""
    created: int = 0
    owner: str = ""


@dataclass(frozen=True, slots=True)
class FullVersion:
    """A registered full (non-adapter) model version: a worker serves it under ``name`` once started."""
    name: str
    path: str
    created: int = 0
    owner: str = ""


class AdapterCatalog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: float = 2.0,
                 max_entries: int = 4096) -> None:
        self.sessions, self.ttl_s, self.max_entries = sessions, ttl_s, max_entries
        self._cache: OrderedDict[str, tuple[float, Adapter | FullVersion | None]] = OrderedDict()
        self._owners: tuple[float, dict[str, str], dict[str, str]] | None = None

    async def lookup(self, model: str) -> Adapter | FullVersion | None:
        """What the registry says ``model`` (a version id or an alias) is: an adapter, a full version, or
        nothing registered."""
        now = time.monotonic()
        if (hit := self._cache.get(model)) is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            async with self.sessions() as session:
                row = await registry.resolve_exact(session, model)
                found = (None if row is None else await self._adapter(session, row) if registry.is_adapter(row)
                         else _full(row))
        except Exception as exc:  # the registry is down: serve what we knew, else treat as unknown
            log.warning("model registry unavailable (%s); lookup of %r answered from cache", exc, model)
            return hit[1] if hit else None
        self._cache[model] = (now, found)
        self._cache.move_to_end(model)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return found

    async def resolve(self, model: str) -> Adapter | None:
        found = await self.lookup(model)
        return found if isinstance(found, Adapter) else None

    async def owners(self) -> tuple[dict[str, str], dict[str, str]]:
        """``({version id or alias: owner}, {alias: version id})`` from the registry; the owner of an alias is
        its version's (empty: shared). Cached for ``ttl_s``; ``({}, {})`` while the registry is down."""
        now = time.monotonic()
        if self._owners is not None and now - self._owners[0] < self.ttl_s:
            return self._owners[1], self._owners[2]
        try:
            async with self.sessions() as session:
                versions = {v.id: v.owner or "" for v in await registry.list_versions(session)}
                aliases = {a.alias: a.version_id for a in await session.scalars(select(registry.ModelAlias))}
        except Exception as exc:
            log.warning("model registry unavailable (%s); models listed without their owners", exc)
            return {}, {}
        owners = {**versions, **{a: versions.get(v, "") for a, v in aliases.items()}}
        self._owners = (now, owners, aliases)
        return owners, aliases

    async def all(self) -> list[Adapter | FullVersion]:
        """Every registered version (for the model list): adapters and full versions."""
        try:
            async with self.sessions() as session:
                rows = await registry.list_versions(session)
                return [await self._adapter(session, r) if registry.is_adapter(r) else _full(r) for r in rows]
        except Exception as exc:
            log.warning("model registry unavailable (%s); registered versions left out of the model list", exc)
            return []

    async def _adapter(self, session: AsyncSession, row: registry.ModelVersion) -> Adapter:
        names, paths = set(), set()
        parent = row.parent or ""
        base = await session.get(registry.ModelVersion, parent) if parent else None
        if base is not None:
            names.add(base.id)
            paths.add(norm_path(base.path))
            aliases = await session.scalars(select(registry.ModelAlias.alias)
                                            .where(registry.ModelAlias.version_id == base.id))
            names.update(aliases)
        elif parent:
            paths.add(norm_path(parent))
        return Adapter(row.id, row.path, parent, frozenset(names), frozenset(paths), _created(row), row.owner or "")


def _created(row: registry.ModelVersion) -> int:
    return int(row.created_at.timestamp()) if row.created_at else 0


def _full(row: registry.ModelVersion) -> FullVersion:
    return FullVersion(row.id, row.path, _created(row), row.owner or "")
