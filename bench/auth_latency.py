"""Auth benchmark: Admit latency and decisions/s on one core, and the gateway's added auth latency vs LiteLLM.

    .venv/bin/python -m bench.auth_latency admit --requests 20000 --concurrency 32
    .venv/bin/python -m bench.auth_latency gateway --rounds 3 --requests 1500 --concurrency 16 \
        [--litellm /tmp/litellm-venv/bin/litellm]

``admit``: one auth replica (``python -m services.auth.main``) pinned to CPU 0
with ``taskset``, keys in PostgreSQL, limits in Redis; the load generator is
pinned to CPU 1 and sends Admit (and, with ``--report``, ReportUsage) over
real gRPC on ``--keys`` keys with limits that never bind.

``gateway``: see :mod:`bench.auth_gateway`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import psutil
import redis

from services.auth.store import KeySpec, Store
from services.cli.stack import free_port
from services.common.db.engine import make_engine
from services.common.db.migrate import upgrade
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

PG_ADMIN = os.environ.get("LLMSVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LLMSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def purge_redis(prefix: str) -> None:
    client = redis.from_url(REDIS_URL)
    for k in client.scan_iter(f"{prefix}*", count=1000):
        client.delete(k)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] if len(values) > 1 else values[0]


async def temp_database() -> tuple[str, str]:
    name = f"llmsvc_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name, PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def make_keys(url: str, n: int) -> list[str]:
    store = Store(make_engine(url))
    try:
        return [(await store.create_key(KeySpec(name=f"bench{i}", rpm=10_000_000, tpm=10**12)))[1] for i in range(n)]
    finally:
        await store.engine.dispose()


def spawn_auth(url: str, port: int, prefix: str, home: Path, cpu: int) -> subprocess.Popen:
    env = {**os.environ, "LLMSVC_DATABASE_URL": url, "LLMSVC_REDIS_URL": REDIS_URL, "LLMSVC_AUTH_REDIS_PREFIX": prefix,
           "LLMSVC_AUTH_HOST": "127.0.0.1", "LLMSVC_AUTH_PORT": str(port), "LLMSVC_AUTH_LOG_LEVEL": "WARNING",
           "LLMSVC_AUTH_SPOOL_DIR": str(home / "spool"), "LLMSVC_AUTH_API_KEY": "sk-bench-" + secrets.token_hex(16),
           # A saturated shared machine must not trip the outage policy mid-measurement.
           "LLMSVC_AUTH_REDIS_TIMEOUT_S": "5", "LLMSVC_AUTH_DB_TIMEOUT_S": "10"}
    return subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "services.auth.main"], env=env,
                            stdout=open(home / "auth.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def wait_serving(address: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as ch:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("auth exited; see its log")
            try:
                r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(address)


async def admit_load(address: str, keys: list[str], n: int, concurrency: int,
                     report: bool) -> tuple[list[float], float]:
    """Latencies of ``n`` Admit calls (each followed by ReportUsage if ``report``) and the wall time they took."""
    latencies: list[float] = []
    counter = itertools.count()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthStub(channel)

        async def worker() -> None:
            while (i := next(counter)) < n:
                start = time.perf_counter()
                r = await stub.Admit(pb.AdmitRequest(api_key=keys[i % len(keys)], request_id=f"b{i}", model="m",
                                                     scope="chat", reserve_tokens=64))
                latencies.append(time.perf_counter() - start)
                if r.decision != pb.DECISION_ALLOWED:
                    raise RuntimeError(f"unexpected decision {r.code}")
                if report:
                    await stub.ReportUsage(pb.ReportUsageRequest(
                        reservation_id=r.reservation_id, request_id=f"b{i}", key_id=r.key_id, model="m",
                        prompt_tokens=20, completion_tokens=30, status="ok", latency_s=0.01))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - start


async def bench_admit(a) -> None:
    os.sched_setaffinity(0, {a.client_cpu})
    home = Path(tempfile.mkdtemp(prefix="llmsvc-authbench-"))
    name, url = await temp_database()
    prefix = f"llmsvc-bench:{uuid.uuid4().hex[:8]}:"
    port = free_port()
    proc = None
    try:
        await asyncio.to_thread(upgrade, url)
        keys = await make_keys(url, a.keys)
        proc = spawn_auth(url, port, prefix, home, a.auth_cpu)
        address = f"127.0.0.1:{port}"
        await wait_serving(address, proc)
        await admit_load(address, keys, min(2000, a.requests), a.concurrency, a.report)  # warm caches, scripts
        print("| calls | concurrency | decisions/s | per auth CPU-second | Lua µs/call | p50 ms | p99 ms | p99.9 ms |\n"
              "|---|---|---|---|---|---|---|---|")
        auth_proc, rds = psutil.Process(proc.pid), redis.from_url(REDIS_URL)
        for _ in range(a.rounds):
            cpu0, lua0 = _cpu(auth_proc), rds.info("commandstats").get("cmdstat_evalsha", {})
            lat, wall = await admit_load(address, keys, a.requests, a.concurrency, a.report)
            cpu, lua = _cpu(auth_proc) - cpu0, rds.info("commandstats").get("cmdstat_evalsha", {})
            lua_us = (lua["usec"] - lua0.get("usec", 0)) / max(1, lua["calls"] - lua0.get("calls", 0))
            label = "Admit + ReportUsage" if a.report else "Admit"
            print(f"| {label} | {a.concurrency} | {len(lat) / wall:,.0f} | {len(lat) / cpu:,.0f} | {lua_us:.1f} | "
                  f"{pct(lat, 50) * 1e3:.2f} | {pct(lat, 99) * 1e3:.2f} | {pct(lat, 99.9) * 1e3:.2f} |")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        await drop_database(name)
        purge_redis(prefix)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    ad = sub.add_parser("admit", help="Admit latency and throughput of one auth replica on one core")
    ad.add_argument("--requests", type=int, default=20_000)
    ad.add_argument("--concurrency", type=int, default=32)
    ad.add_argument("--keys", type=int, default=50)
    ad.add_argument("--rounds", type=int, default=3)
    ad.add_argument("--report", action="store_true", help="follow each Admit with its ReportUsage")
    ad.add_argument("--auth-cpu", type=int, default=0)
    ad.add_argument("--client-cpu", type=int, default=1)
    gw = sub.add_parser("gateway", help="added latency of the gateway's auth path, llmsvc vs LiteLLM")
    from bench.auth_gateway import add_args

    add_args(gw)
    a = p.parse_args()
    if a.part == "admit":
        asyncio.run(bench_admit(a))
    else:
        from bench.auth_gateway import run

        run(a)


if __name__ == "__main__":
    main()
