"""Two real vLLM-CPU workers on one machine run their model runners on different cores.

vLLM's automatic binding pins every engine's model runner to the same first cores; ``llmsvc up --workers N``
gives each worker its own slice (``services.cli.stack.worker_cpus``). Read back from the live processes.
"""

from __future__ import annotations

import os

import psutil


def _runner_affinity(pid: int) -> set[int]:
    """The CPU affinity of the worker's busiest descendant thread group: vLLM's model runner process."""
    procs = psutil.Process(pid).children(recursive=True)
    runners = [p for p in procs if "Worker" in p.name() or any("Worker" in a for a in p.cmdline())]
    assert runners, f"no model runner under worker pid {pid}: {[p.name() for p in procs]}"
    return set(runners[0].cpu_affinity())


def test_each_worker_binds_its_own_cores(stack2):
    affinities = [_runner_affinity(stack2.procs[f"worker{i}"].popen.pid) for i in range(2)]
    n = len(os.sched_getaffinity(0))
    assert all(affinities)
    if n >= 2:
        assert not affinities[0] & affinities[1], affinities
    assert affinities == [{int(c) for c in stack2.env_for("worker", i)["VLLM_CPU_OMP_THREADS_BIND"].split(",")}
                          for i in range(2)]
