"""The engine's CPU priority when it shares a machine with the serving path (``llmsvc up``).

On a machine where gateway, auth, router and workers share the same cores, vLLM's engine core and
model runner are always runnable: between steps they spin on their shared-memory queue. The serving
path's processes use little CPU but wake up thousands of times a second, once per message, and each
wake-up waits behind the spinning engine for its turn on a core. Measured on two cores (docs/benchmarks.md):
without this, the gateway, auth and router spent 10-20 times as long waiting to run as running, and a
request's hops before the engine took 80-250 ms of its time to first token.

Linux shares CPU between sessions first (autogroup, on by default for desktop and VM kernels), and
within a session by nice value. So a worker that leads its own session (every worker ``llmsvc up``
and the eval service start do) lowers its session's priority, which covers the engine processes it
starts. Any worker also lowers its own nice value, which they inherit, for kernels without autogroup.
Nothing changes in a container with its own CPU cgroup, where neither applies across pods.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower_cpu_priority(nice: int) -> list[str]:
    """Lower this process's (and its future children's) CPU priority to ``nice``; returns what changed."""
    if nice <= 0:
        return []
    done = apply_nice(nice)
    log.info("engine CPU priority lowered to nice %d (%s)", nice, ", ".join(done) or "already there")
    return done


def apply_nice(nice: int) -> list[str]:
    """:func:`lower_cpu_priority` without logging (safe in a ``preexec_fn``, between fork and exec)."""
    done = []
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        done.append("process")
    # Only a session leader: in someone's shell session the group is the shell's too.
    if os.getsid(0) == os.getpid():
        try:
            AUTOGROUP.write_text(str(nice))
            done.append("autogroup")
        except OSError:  # no autogroup in this kernel, or not permitted
            pass
    return done
