"""Training code that runs inside a job: data pipeline, Llama presets, recipes, checkpoints, torchrun.

Entry point: ``python -m trainer.run --spec SPEC.json`` (see README.md in this folder).
"""

import os
import sys

# CPU training here shares its cores with other processes. OpenMP's default of spinning idle threads
# made a training step ~9x slower on an oversubscribed 2-core machine (measured, see docs/benchmarks.md);
# passive waiting costs little when the cores are free. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SPIN_COUNT = "300000"
"""libgomp's own default spin before a waiting thread sleeps (``GOMP_SPINCOUNT`` overrides the passive policy)."""


def claim_the_cores() -> bool:
    """For a build that has the machine to itself (``llmsvc up``'s first-run tiny-chat, its benchmark): load torch
    with OpenMP threads that spin a little before they sleep, 27% more training tokens/s than passive waiting on
    two idle cores (docs/benchmarks.md). Call before anything imports torch; the setting is taken out of the
    environment again once torch has read it, so the processes started afterwards wait passively. False (and
    nothing changed) if torch is already loaded or ``GOMP_SPINCOUNT`` is set."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        import torch  # noqa: F401  (OpenMP reads its settings when torch loads it)

        torch.zeros(2).add_(1)
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    return True
