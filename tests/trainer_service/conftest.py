"""Fixtures of the trainer service tests: a model store with the tiny base model, a database per backend,
and the trainer service itself, in this process, on a real port, reached over a real gRPC channel."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from services.common.pb import trainer_pb2_grpc
from services.trainer.config import TrainerSettings
from services.trainer.runners.local import LocalProcessRunner
from services.trainer.service import TrainerService, start

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def store_root(tmp_path_factory, default_model) -> Path:
    """A model store holding the tiny base model as ``tiny-random`` (a link to the cached build)."""
    root = tmp_path_factory.mktemp("store")
    (root / "tiny-random").symlink_to(default_model, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A folder jobs may name JSONL paths in (``data_dirs``)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'llmsvc.db'}"
    # A database per module: other stacks in the session run trainer supervisors of their own.
    return request.getfixturevalue("pg_database")()


def settings_for(db_url: str, store: Path, data_dir: Path) -> TrainerSettings:
    return TrainerSettings(host="127.0.0.1", port=0, database_url=db_url, model_store=store, data_dirs=[data_dir],
                           poll_interval_s=0.1, cancel_grace_s=30, memory_budget_gib=8, max_concurrent_jobs=2)


def real_runner() -> LocalProcessRunner:
    """``python -m trainer.run``: the real training code."""
    return LocalProcessRunner(sys.executable, "trainer.run", grace_s=30, memory_budget_gib=8)


def standin_runner() -> LocalProcessRunner:
    """The stand-in trainer of this folder (see its docstring for what it is for)."""
    return LocalProcessRunner(sys.executable, "standin_trainer", grace_s=30, memory_budget_gib=8, cwd=str(HERE))


class Running:
    """A started service and a stub on a real channel to it."""

    def __init__(self, service: TrainerService) -> None:
        self.service = service
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)

    async def stop(self, suspend: bool = False) -> None:
        await self.channel.close()
        await self.service.stop(5, suspend=suspend)


class ServicePool:
    """Starts services on one database and store (``await pool(runner)``) and stops them all at the end."""

    def __init__(self, db_url: str, store: Path, data_dir: Path) -> None:
        self.db_url, self.store, self.data_dir = db_url, store, data_dir
        self.started: list[Running] = []

    async def __call__(self, runner: LocalProcessRunner) -> Running:
        running = Running(await start(settings_for(self.db_url, self.store, self.data_dir), runner=runner))
        self.started.append(running)
        return running

    async def close(self) -> None:
        for running in self.started:
            if running.channel.get_state() is not grpc.ChannelConnectivity.SHUTDOWN:
                await running.stop()


@pytest.fixture(scope="module")
async def services(db_url, store_root, data_dir):
    """Services for the whole module."""
    pool = ServicePool(db_url, store_root, data_dir)
    yield pool
    await pool.close()


@pytest.fixture
async def own_services(db_url, store_root, data_dir):
    """Services for one test: stopped when it ends, so the next test's services supervise alone."""
    pool = ServicePool(db_url, store_root, data_dir)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def trainer(services) -> Running:
    """The service running the real trainer."""
    return await services(real_runner())
