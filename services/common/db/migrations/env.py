"""Alembic environment: async engine, the whole schema, batch mode on SQLite."""

from __future__ import annotations

import asyncio

from alembic import context

from services.common.db.base import UTCDateTime
from services.common.db.engine import make_engine, normalize_url
from services.common.db.schema import metadata

config = context.config


def _render_item(type_, obj, autogen_context):
    # Our UTC TypeDecorator is plain DateTime(timezone=True) in the database.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )


def run_offline() -> None:
    context.configure(url=normalize_url(config.get_main_option("sqlalchemy.url")), target_metadata=metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    async with engine.connect() as conn:
        await conn.run_sync(lambda sync_conn: (_configure(sync_conn), _run(sync_conn)))
    await engine.dispose()


def _run(_conn) -> None:
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        _run(connection)
    else:
        asyncio.run(run_online())
