"""Training code that runs inside a job: data pipeline, Llama presets, recipes, checkpoints, torchrun.

Entry point: ``python -m trainer.run --spec SPEC.json`` (see README.md in this folder).
"""

import os

# CPU training here shares its cores with other processes. OpenMP's default of spinning idle threads
# made a training step ~9x slower on an oversubscribed 2-core machine (measured, see docs/benchmarks.md);
# passive waiting costs little when the cores are free. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
