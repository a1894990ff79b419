"""Start and stop workers for model versions nobody serves yet: the router's on-demand starters.

Embedded (:class:`SlotLauncher`): the router polls a fixed list of worker
addresses (its static discovery). ``llmsvc up`` gives it spare addresses,
*slots*, besides the running workers'; a worker is started on a free slot as a
child process, and the router admits it as soon as its health turns SERVING.

Kubernetes: :class:`services.lifecycle.kubernetes.DeploymentLauncher` creates a
worker Deployment from the chart's worker template instead.

A started worker serves the version under its id and no alias; promotion adds
the alias later (see :mod:`services.lifecycle.rollout`). Workers a launcher
started are stopped with it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    pass


class Launcher(Protocol):
    """What the router's :class:`services.router.ondemand.OnDemand` needs of a way to run workers."""

    def free(self) -> int:
        """Versions that could be started now without stopping one."""

    async def start(self, version: str, path: str) -> None:
        """Begin starting a worker for ``version`` from ``path`` (returns before it is ready); LaunchError
        when there is no room."""

    def failure(self, version: str) -> str | None:
        """Why the worker for ``version`` can no longer come up (it exited), else None."""

    async def stop(self, version: str) -> None:
        """Stop the worker(s) of ``version`` (a graceful stop: in-flight streams finish in its grace period)."""

    def close(self) -> None:
        """Stop everything this launcher started."""


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host.strip("[]"), int(port))) == 0


class SlotLauncher:
    def __init__(self, slots: list[str], logs: Path, slot_cpus: list[str] | None = None,
                 worker_env: dict[str, str] | None = None) -> None:
        self.slots = slots
        self.slot_cpus = dict(zip(slots, slot_cpus or (), strict=False))
        """vLLM-CPU binding per slot address (see ``services.cli.stack.slot_cpus``)."""
        self.logs = logs
        self.worker_env = worker_env or {}
        """Settings every started worker gets (``LLMSVC_WORKER_*`` and ``VLLM_*``), over this process's env."""
        self.procs: dict[str, tuple[str, subprocess.Popen]] = {}
        """Slot address → (version, process)."""

    def _busy(self) -> set[str]:
        return {a for a, (_v, p) in self.procs.items() if p.poll() is None}

    def _free_slots(self) -> list[str]:
        busy = self._busy()
        return [a for a in self.slots if a not in busy and not _listening(a)]

    def free(self) -> int:
        return len(self._free_slots())

    def _env(self, address: str, version: str, path: str) -> dict[str, str]:
        # Engine settings (dtype, grace, KV cache) pass through; identity and ports are this worker's own.
        own = {"HOST", "PORT", "METRICS_PORT", "MODEL", "SERVED_MODEL_NAME", "MODEL_ALIASES"}
        env = {k: v for k, v in (os.environ | self.worker_env).items()
               if not (k.startswith("LLMSVC_WORKER_") and k[14:] in own)}
        host, _, port = address.rpartition(":")
        env |= {"LLMSVC_WORKER_HOST": host.strip("[]"), "LLMSVC_WORKER_PORT": port, "LLMSVC_WORKER_MODEL": path,
                "LLMSVC_WORKER_SERVED_MODEL_NAME": version, "LLMSVC_WORKER_MODEL_ALIASES": "[]",
                "PYTHONUNBUFFERED": "1"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if self.slot_cpus.get(address) and "VLLM_CPU_OMP_THREADS_BIND" not in env:  # the user's own binding wins
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.slot_cpus[address]
        return env

    def log_path(self, version: str) -> Path:
        return self.logs / f"worker-{version}.log"

    async def start(self, version: str, path: str) -> None:
        free = self._free_slots()
        if not free:
            raise LaunchError(f"every worker slot is in use ({', '.join(self.slots) or 'none configured'})")
        address = free[0]
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(version), "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "services.worker.main"],
                                    env=self._env(address, version, path),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[address] = (version, proc)
        log.info("started a worker for %s on %s (pid %d)", version, address, proc.pid)

    def _of(self, version: str) -> list[subprocess.Popen]:
        return [p for v, p in self.procs.values() if v == version]

    def failure(self, version: str) -> str | None:
        procs = self._of(version)
        if procs and all(p.poll() is not None for p in procs):
            return (f"the worker for {version} exited with code {procs[-1].returncode}; "
                    f"see {self.log_path(version)}")
        return None

    async def stop(self, version: str) -> None:
        for address, (v, proc) in list(self.procs.items()):
            if v == version:
                _signal(proc, signal.SIGTERM)
                log.info("stopping the worker for %s on %s (pid %d)", version, address, proc.pid)

    def close(self, timeout_s: float = 20.0) -> None:
        procs = [p for _v, p in self.procs.values()]
        for proc in procs:
            if proc.poll() is None:
                _signal(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
