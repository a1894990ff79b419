"""Shared fixtures: the real local stack (one vLLM worker per test session), PostgreSQL and Redis.

The stack is started with the same :class:`services.cli.stack.Stack` that
``llmsvc up`` uses, on free ports, each service in its own process.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pytest

from services.cli.stack import Stack, StackConfig

MODEL_CACHE = Path(os.environ.get("LLMSVC_TEST_CACHE", Path.home() / ".cache" / "llmsvc-test"))


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The random tiny Llama that ``llmsvc up`` serves by default, built once and cached (in a folder that
    changes with its chat template and settings, so a cache from older code is never served)."""
    from services.cli.default_model import cached

    return cached(MODEL_CACHE)


@pytest.fixture(scope="session")
def api_key() -> str:
    return "sk-test-" + secrets.token_hex(16)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, default_model, api_key):
    """gateway → auth → router → one vLLM worker, as separate processes; shared by the session."""
    home = tmp_path_factory.mktemp("stack")
    cfg = StackConfig.ephemeral(home, default_model, api_key)
    with Stack(cfg).running() as s:
        yield s


@pytest.fixture(scope="session")
def base_url(stack) -> str:
    return stack.cfg.base_url


@pytest.fixture(scope="session")
def model_name(stack) -> str:
    return stack.cfg.served_model_name or stack.cfg.model.name


@pytest.fixture(scope="session")
def openai_client(base_url, api_key):
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


PG_ADMIN_URL = os.environ.get("LLMSVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LLMSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _make_pg_database() -> tuple[str, str]:
    import asyncio

    import asyncpg

    name = f"llmsvc_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)


def _drop_pg_database(name: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session")
def pg_database():
    """Factory of fresh PostgreSQL databases (``postgresql+asyncpg://`` URLs), all dropped at session end.

    Each stack or service under test that runs background workers (the trainer's supervisor, the eval
    service) gets its own database, so two of them never pick up each other's jobs.
    """
    names: list[str] = []

    def make() -> str:
        name, url = _make_pg_database()
        names.append(name)
        return url

    yield make
    for name in names:
        _drop_pg_database(name)


@pytest.fixture(scope="session")
def pg_url(pg_database):
    """A fresh PostgreSQL database for this session (``postgresql+asyncpg://`` URL); dropped afterwards."""
    return pg_database()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so concurrent runs never share limiter state."""
    return f"llmsvc-test:{uuid.uuid4().hex[:8]}:"
