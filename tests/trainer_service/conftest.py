"""Fixtures of the trainer service tests: a model store with the tiny base model, a database per backend,
and the trainer service itself, in this process, on a real port, reached over a real gRPC channel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest

from services.common.pb import trainer_pb2_grpc
from services.trainer.config import TrainerSettings
from services.trainer.runners.local import LocalProcessRunner
from services.trainer.service import start

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

CHAT = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": str(a + b)}]} for a in range(4) for b in range(3)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def store_root(tmp_path_factory, default_model) -> Path:
    """A model store holding the tiny base model as ``tiny-random`` (a link to the cached build)."""
    root = tmp_path_factory.mktemp("store")
    (root / "tiny-random").symlink_to(default_model, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'llmsvc.db'}"
    return request.getfixturevalue("pg_url")


def settings_for(db_url: str, store: Path, data_dir: Path, **kw) -> TrainerSettings:
    return TrainerSettings(host="127.0.0.1", port=0, database_url=db_url, model_store=store, data_dirs=[data_dir],
                           poll_interval_s=0.1, cancel_grace_s=20, memory_budget_gib=kw.pop("memory_budget_gib", 8),
                           **kw)


def standin_runner() -> LocalProcessRunner:
    """The runner with the stand-in trainer of this folder (see its docstring for what it is for)."""
    return LocalProcessRunner(sys.executable, "standin_trainer", grace_s=20, memory_budget_gib=8, cwd=str(HERE))


@pytest.fixture(scope="module")
async def trainer(db_url, store_root, data_dir):
    """The service with the stand-in trainer; yields ``(service, stub)``."""
    service = await start(settings_for(db_url, store_root, data_dir), runner=standin_runner())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield service, trainer_pb2_grpc.TrainerStub(channel)
    finally:
        await channel.close()
        await service.stop(5, suspend=False)
