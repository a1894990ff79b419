"""Jobs as local processes: ``python -m trainer.run``, or torchrun for several processes.

Each job gets its own session (process group), so that stopping this service
with Ctrl-C does not kill a run mid-step, and SIGTERM reaches every process of
the group (torchrun forwards it to its workers). The handle is
``<pid>:<start time>``: after a restart of this service the job is found again
by pid, and the start time guards against a recycled pid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time

import psutil

from .base import Launch, Runner, RunState

log = logging.getLogger(__name__)

TERMINATED = (143, -signal.SIGTERM)


class LocalProcessRunner(Runner):
    name = "local"
    suspend_on_shutdown = True
    """A graceful stop of the service stops its jobs (they checkpoint) and queues them to resume."""

    def __init__(self, python: str, module: str = "trainer.run", grace_s: float = 60.0,
                 memory_budget_gib: float = 0.0, cwd: str | None = None) -> None:
        self.python, self.module, self.grace_s = python, module, grace_s
        self.memory_budget_gib, self.cwd = memory_budget_gib, cwd
        self._procs: dict[str, subprocess.Popen] = {}
        self._kill_at: dict[str, float] = {}

    def command(self, launch: Launch) -> list[str]:
        args = ["-m", self.module, "--spec", str(launch.spec_path), "--events", str(launch.events_path)]
        if (launch.nproc_per_node or 1) > 1:
            # torchrun as a module of the same interpreter, so the job sees the same packages.
            return [self.python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={launch.nproc_per_node}", *args]
        return [self.python, *args]

    @staticmethod
    def env(launch: Launch) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LLMSVC_JOB_ID": launch.job_id}
        # This service's own metrics port: a job must not try to bind it (the service relays job metrics).
        env.pop("LLMSVC_TRAINER_METRICS_PORT", None)
        return env

    async def start(self, launch: Launch) -> str:
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(launch.log_path, "ab") as log_file:
            popen = subprocess.Popen(
                self.command(launch), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.cwd, env=self.env(launch),
            )
        self._procs[launch.job_id] = popen
        created = psutil.Process(popen.pid).create_time()
        log.info("job %s started as pid %d", launch.job_id, popen.pid)
        return f"{popen.pid}:{created:.3f}"

    @staticmethod
    def _alive(handle: str) -> bool:
        pid, _, created = handle.partition(":")
        try:
            proc = psutil.Process(int(pid))
            return abs(proc.create_time() - float(created)) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, ValueError):
            return False

    async def state(self, job_id: str, handle: str) -> RunState:
        self._kill_if_overdue(job_id, handle)
        popen = self._procs.get(job_id)
        if popen is None:  # started by an earlier run of this service: only liveness is known
            return RunState("running") if self._alive(handle) else RunState("gone", "the job's process ended")
        code = popen.poll()
        if code is None:
            return RunState("running")
        self._procs.pop(job_id, None)
        self._kill_at.pop(job_id, None)
        if code == 0:
            return RunState("succeeded")
        if code in TERMINATED:
            return RunState("failed", "the job was terminated (SIGTERM)")
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return RunState("failed", f"the trainer process failed ({reason})")

    def _signal(self, handle: str, sig: int) -> None:
        if not self._alive(handle):
            return
        try:
            os.killpg(int(handle.split(":")[0]), sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_if_overdue(self, job_id: str, handle: str) -> None:
        deadline = self._kill_at.get(job_id)
        if deadline is not None and time.monotonic() > deadline:
            log.warning("job %s ignored SIGTERM for %.0fs; killing it", job_id, self.grace_s)
            self._signal(handle, signal.SIGKILL)
            self._kill_at.pop(job_id, None)

    async def stop(self, job_id: str, handle: str) -> None:
        self._signal(handle, signal.SIGTERM)
        self._kill_at.setdefault(job_id, time.monotonic() + self.grace_s)

    async def wait_all(self, timeout_s: float) -> None:
        """Wait for the processes this runner started (used when the service drains)."""
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in self._procs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for popen in list(self._procs.values()):
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)

    def memory_budget(self) -> tuple[float, bool]:
        if self.memory_budget_gib:
            return self.memory_budget_gib * 1024**3, False
        return psutil.virtual_memory().available * 0.9, False
