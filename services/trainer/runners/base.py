"""The interface every runner implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Launch:
    """Everything a runner needs to start one job; paths lie in the model store."""

    job_id: str
    spec_path: Path
    events_path: Path
    log_path: Path
    nodes: int = 1
    """Machines (pods); more than one only on Kubernetes."""
    nproc_per_node: int | None = None
    """Processes per machine (more than one runs under torchrun); None: the runner's default
    (1 locally, one per GPU on Kubernetes)."""


@dataclass(frozen=True)
class RunState:
    phase: Literal["running", "succeeded", "failed", "gone"]
    """``gone``: the runner knows nothing of the job any more (process vanished, Job deleted)."""
    message: str = ""


class Runner(ABC):
    """Everything the supervisor and the job factory call on a runner is declared here."""

    name: str
    supports_nodes: bool = False
    default_nproc: int = 1
    """Processes per machine when a job does not say."""
    suspend_on_shutdown: bool = False
    """Whether a graceful stop of this service stops the running jobs (they checkpoint) and queues them to
    resume on the next start: local jobs, which are this service's children. Kubernetes Jobs keep running."""

    @abstractmethod
    async def start(self, launch: Launch) -> str:
        """Start the job; return a handle to find it again (also after this service restarts)."""

    @abstractmethod
    async def state(self, job_id: str, handle: str) -> RunState:
        """Where the job stands now."""

    @abstractmethod
    async def stop(self, job_id: str, handle: str) -> None:
        """Ask the job to stop: SIGTERM, so it checkpoints and exits (exit code 143)."""

    async def cleanup(self, job_id: str, handle: str) -> None:
        """Release what the job held once it ended.

        An optional hook, deliberately not abstract: runners whose jobs hold
        nothing beyond their processes (the local runner) keep this default,
        which does nothing; the Kubernetes runner overrides it.
        """
        return

    async def wait_all(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the jobs :meth:`stop` was called on to exit (with
        ``suspend_on_shutdown``). A default that returns at once, for runners whose jobs outlive this service."""
        return

    @abstractmethod
    def memory_budget(self) -> tuple[float, bool]:
        """Bytes one process may use and whether that is GPU memory."""
