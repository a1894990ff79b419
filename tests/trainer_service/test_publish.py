"""A finished model's folder and its registry row never end up apart (SQLite and PostgreSQL, real files).

- The database fails while the version is registered: the folder goes back to the job's output, the call
  raises (the supervisor tries again on its next tick), and the next try registers it.
- The process dies between moving the folder to its version slot and registering it: the next try finds the
  folder by the job id written in it and publishes it.
Either way the model is registered once, at the path where it lies, with its owner.
"""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy.exc import OperationalError

from services.common.db import registry
from services.common.db.engine import make_engine, session_factory
from services.common.db.migrate import upgrade
from services.trainer.store import PUBLISH_MARKER, ModelStore


@pytest.fixture
async def sessions(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


def _staging(tmp_path, default_model, name: str):
    staging = tmp_path / ".jobs" / name / "output"
    shutil.copytree(default_model, staging, symlinks=False)
    return staging


async def test_a_database_error_while_registering_puts_the_folder_back(tmp_path, default_model, sessions,
                                                                       monkeypatch):
    store = ModelStore(tmp_path)
    name = f"pub-{tmp_path.name[-8:]}"
    staging = _staging(tmp_path, default_model, name)
    real = registry.register_version

    async def failing(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("the database went away"))

    monkeypatch.setattr(registry, "register_version", failing)
    async with sessions() as session:
        with pytest.raises(OperationalError):
            await store.publish(session, name, staging, job_id="ftjob-a", owner="team-a")
    assert staging.is_dir() and not any(p.is_dir() for p in (tmp_path / name).glob("*"))
    monkeypatch.setattr(registry, "register_version", real)
    async with sessions() as session:
        row = await store.publish(session, name, staging, job_id="ftjob-a", owner="team-a")
    assert (row.id, row.owner) == (f"{name}-v1", "team-a") and (tmp_path / name / "1" / "config.json").is_file()
    assert not staging.exists()


async def test_a_crash_between_moving_and_registering_is_recovered(tmp_path, default_model, sessions):
    store = ModelStore(tmp_path)
    name = f"crash-{tmp_path.name[-8:]}"
    staging = _staging(tmp_path, default_model, name)
    # what publish had done when the process died: the marker written, the folder moved, no row
    (staging / PUBLISH_MARKER).write_text("ftjob-b")
    slot = store.version_dir(name, 1)
    slot.parent.mkdir(parents=True)
    staging.rename(slot)
    async with sessions() as session:
        row = await store.publish(session, name, staging, job_id="ftjob-b", owner="team-b")
        assert [v.id for v in await registry.list_versions(session, name)] == [f"{name}-v1"]
    assert row.path == str(slot) and (slot / "config.json").is_file() and row.owner == "team-b"
