"""The first ``llmsvc up`` registers its built model as ``tiny-chat-v1`` with the alias ``tiny-chat``
(services/cli/default_version.py), on the embedded SQLite file as ``llmsvc up`` uses it."""

from __future__ import annotations

import asyncio

from services.cli.default_version import ensure_default_version
from services.common.db import registry
from services.common.db.engine import make_engine, session_factory, sqlite_url


def _run(db_url: str, fn):
    async def go():
        engine = make_engine(db_url)
        try:
            async with session_factory(engine)() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_a_fresh_home_gets_the_version_and_the_alias_once(tmp_path, default_model):
    db = sqlite_url(tmp_path / "llmsvc.db")
    assert ensure_default_version(db, default_model) == ("tiny-chat-v1", ["tiny-chat"])
    assert ensure_default_version(db, default_model) == ("tiny-chat-v1", ["tiny-chat"])  # a restart adds nothing
    versions = _run(db, lambda s: registry.list_versions(s, "tiny-chat"))
    assert [(v.id, v.path) for v in versions] == [("tiny-chat-v1", str(default_model))]
    assert _run(db, lambda s: registry.resolve(s, "tiny-chat")).id == "tiny-chat-v1"


def test_a_promotion_survives_a_restart(tmp_path, default_model):
    db = sqlite_url(tmp_path / "llmsvc.db")
    ensure_default_version(db, default_model)

    async def promote(session):
        v2 = await registry.register_version(session, "tiny-chat", str(tmp_path / "v2"))
        await registry.set_alias(session, "tiny-chat", v2.id, actor="test")

    _run(db, promote)
    # The default worker still serves tiny-chat-v1, but no longer claims the alias that now names v2.
    assert ensure_default_version(db, default_model) == ("tiny-chat-v1", [])
    assert _run(db, lambda s: registry.resolve(s, "tiny-chat")).id == "tiny-chat-v2"
