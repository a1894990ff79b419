"""Auth fixtures: real auth servers (in-process on port 0, or as processes), real PostgreSQL and Redis.

``auth_server`` runs the production runtime (``services.auth.runtime``) in the
test's event loop; ``auth_processes`` starts ``python -m services.auth.main``
replicas exactly as a deployment would. ``pg_stack`` is the whole stack
(gateway → auth → router → vLLM worker) on PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.auth.config import AuthSettings
from services.auth.runtime import AuthRuntime
from services.cli.stack import Stack, StackConfig, free_port
from services.common.db.migrate import upgrade
from services.common.grpcutil import insecure_channel
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("LLMSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")
# Timeouts for tests that are not about outages: this machine is shared and often saturated, and a
# Redis or database call that is merely slow must not trip the outage policy there.
PATIENT = {"redis_timeout_s": 5.0, "db_timeout_s": 10.0}
PATIENT_ENV = {"LLMSVC_AUTH_REDIS_TIMEOUT_S": "5", "LLMSVC_AUTH_DB_TIMEOUT_S": "10"}


@pytest.fixture(scope="session")
def auth_db(pg_database) -> str:
    """A PostgreSQL database of the auth tests' own, migrated to head."""
    url = pg_database()
    upgrade(url)
    return url


def purge_redis(prefix: str) -> None:
    """Delete every key under ``prefix`` (the limiter's windows expire on their own; this keeps Redis tidy)."""
    import redis

    client = redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _tidy_redis(redis_prefix):
    yield
    purge_redis(redis_prefix)


@pytest.fixture(scope="session")
def admin_secret() -> str:
    return "sk-admin-" + secrets.token_urlsafe(24)


@dataclass
class AuthHandle:
    runtime: AuthRuntime
    server: grpc.aio.Server
    address: str
    channel: grpc.aio.Channel
    auth: auth_pb2_grpc.AuthStub
    admin: auth_pb2_grpc.AuthAdminStub
    admin_md: tuple


@contextlib.asynccontextmanager
async def auth_server(tmp_path: Path, database_url: str, admin_secret: str, **overrides):
    """One auth replica in this event loop, built by the production runtime."""
    settings = AuthSettings(**({"host": "127.0.0.1", "port": 0, "database_url": database_url,
                                "api_key": admin_secret, "spool_dir": tmp_path / "spool",
                                "replica_id": uuid.uuid4().hex[:8]} | PATIENT | overrides))
    runtime = await AuthRuntime.start(settings)
    server, _ = runtime.build_server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = insecure_channel(f"127.0.0.1:{port}")
    try:
        yield AuthHandle(runtime, server, f"127.0.0.1:{port}", channel, auth_pb2_grpc.AuthStub(channel),
                         auth_pb2_grpc.AuthAdminStub(channel), (("authorization", f"Bearer {admin_secret}"),))
    finally:
        await channel.close()
        await server.stop(0)
        await runtime.close()


async def create_key(admin: auth_pb2_grpc.AuthAdminStub, md, **fields) -> pb.CreateKeyResponse:
    return await admin.CreateKey(pb.CreateKeyRequest(**({"name": "test"} | fields)), metadata=md, timeout=10)


@dataclass
class AuthProcess:
    popen: subprocess.Popen
    address: str
    log_path: Path
    metrics_url: str = ""


def _spawn_auth(tmp: Path, i: int, env_extra: dict[str, str], metrics: bool = False) -> AuthProcess:
    port, metrics_port = free_port(), free_port() if metrics else 0
    env = {**os.environ, **PATIENT_ENV, "PYTHONUNBUFFERED": "1", "LLMSVC_AUTH_HOST": "127.0.0.1",
           "LLMSVC_AUTH_PORT": str(port),
           "LLMSVC_AUTH_SPOOL_DIR": str(tmp / "spool"), "LLMSVC_AUTH_REPLICA_ID": f"r{i}",
           "LLMSVC_AUTH_METRICS_PORT": str(metrics_port), **env_extra}
    log_path = tmp / f"auth{i}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen([sys.executable, "-m", "services.auth.main"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    return AuthProcess(popen, f"127.0.0.1:{port}", log_path,
                       f"http://127.0.0.1:{metrics_port}/metrics" if metrics else "")


async def _wait_serving(p: AuthProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(p.address) as ch:
        while time.monotonic() < deadline:
            assert p.popen.poll() is None, p.log_path.read_text()[-3000:]
            with contextlib.suppress(grpc.aio.AioRpcError):
                r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"auth replica at {p.address} not serving; log: {p.log_path}")


@contextlib.asynccontextmanager
async def auth_processes(tmp: Path, n: int, env_extra: dict[str, str], metrics: bool = False):
    """``n`` auth replicas as separate processes on free ports (each with /metrics if ``metrics``)."""
    procs = [_spawn_auth(tmp, i, env_extra, metrics) for i in range(n)]
    try:
        await asyncio.gather(*(_wait_serving(p) for p in procs))
        yield procs
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in procs:
            try:
                p.popen.wait(15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory, default_model, auth_db, admin_secret):
    """gateway → auth → router → one vLLM worker, with keys and usage in PostgreSQL and limits in Redis."""
    home = tmp_path_factory.mktemp("pg-stack")
    prefix = f"llmsvc-test:{uuid.uuid4().hex[:8]}:"
    cfg = StackConfig.ephemeral(home, default_model, admin_secret, database_url=auth_db, redis_url=REDIS_URL,
                                extra_env={"LLMSVC_AUTH_REDIS_PREFIX": prefix, **PATIENT_ENV})
    try:
        with Stack(cfg).running() as stack:
            yield stack
    finally:
        purge_redis(prefix)
