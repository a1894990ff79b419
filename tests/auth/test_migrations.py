"""The auth migration builds the auth tables on an empty database, PostgreSQL and SQLite, with no drift.

Drift is checked for the auth tables (other domains check theirs), with the same
comparison ``alembic check`` runs.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.common.db.engine import make_engine, sqlite_url
from services.common.db.migrate import upgrade
from services.common.db.schema import metadata

AUTH_TABLES = {"api_keys", "usage_records"}
PG_ADMIN_URL = os.environ.get("LLMSVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _touches_auth(diff) -> bool:
    """Whether one ``compare_metadata`` entry (a tuple, or a list of column changes) is about an auth table."""
    for op in diff if isinstance(diff, list) else [diff]:
        for part in op[1:]:
            names = {part} if isinstance(part, str) else {getattr(part, "name", None),
                                                          getattr(getattr(part, "table", None), "name", None)}
            if names & AUTH_TABLES:
                return True
    return False


async def _inspect(url: str):
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            def run(sync_conn):
                ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                insp = inspect(sync_conn)
                indexes = {t: {i["name"] for i in insp.get_indexes(t)} for t in AUTH_TABLES}
                uniques = {t: {tuple(u["column_names"]) for u in insp.get_unique_constraints(t)} for t in AUTH_TABLES}
                return compare_metadata(ctx, metadata), indexes, uniques, ctx.get_current_revision()
            return await conn.run_sync(run)
    finally:
        await engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_db(request, tmp_path):
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "empty.db")
        return
    name = f"llmsvc_test_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_upgrade_empty_database_to_head_without_drift(empty_db):
    upgrade(empty_db)
    upgrade(empty_db)  # idempotent
    diffs, indexes, uniques, revision = await _inspect(empty_db)
    assert revision is not None
    assert [d for d in diffs if _touches_auth(d)] == []
    assert {"ix_usage_records_key_id_created_at", "ix_usage_records_created_at"} <= indexes["usage_records"]
    assert ("reservation_id",) in uniques["usage_records"] and ("prefix",) in uniques["api_keys"]


async def test_the_drift_check_sees_a_missing_index(tmp_path):
    """The comparison above is not vacuous: drop an auth index and it reports it."""
    url = sqlite_url(tmp_path / "drift.db")
    upgrade(url)
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP INDEX ix_usage_records_key_id_created_at")
    await engine.dispose()
    diffs, *_ = await _inspect(url)
    assert [d[0] for d in diffs if _touches_auth(d)] == ["add_index"]
