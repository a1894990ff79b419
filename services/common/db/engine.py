"""Engine and session factory for a database URL.

Accepted URLs: ``postgresql://…`` / ``postgres://…`` (driven by asyncpg),
``postgresql+asyncpg://…``, ``sqlite:///path`` / ``sqlite+aiosqlite:///path``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def normalize_url(url: str) -> str:
    for plain, driver in (("postgres://", "postgresql+asyncpg://"), ("postgresql://", "postgresql+asyncpg://"),
                          ("sqlite:///", "sqlite+aiosqlite:///")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{Path(path).resolve()}"


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            # WAL lets readers proceed while a writer commits; several local processes share the file.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def default_database_url() -> str:
    """``$LLMSVC_DATABASE_URL``, else the embedded SQLite file in ``$LLMSVC_HOME`` (default ``~/.llmsvc``)."""
    import os

    if url := os.environ.get("LLMSVC_DATABASE_URL"):
        return normalize_url(url)
    home = Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc"))
    home.mkdir(parents=True, exist_ok=True)
    return sqlite_url(home / "llmsvc.db")
