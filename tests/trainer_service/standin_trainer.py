"""A stand-in for ``python -m trainer.run``, used only by the tests that exercise failure modes the real
trainer does not produce on demand (a crash, a success without a complete model, a slow step to cancel).

It follows trainer/README.md's contract: it reads SPEC.json, appends events to ``--events``, checkpoints
every ``checkpoint_every`` steps, writes the output directory atomically with ``llmsvc.json``, and on
SIGTERM checkpoints, reports ``cancelled`` and exits 143. Its "training" copies the base model.

Behaviour is chosen by the spec's ``name``: ``*crash*`` fails at step 2, ``*incomplete*`` succeeds without
weights; the step time is ``STANDIN_STEP_S`` seconds (default 0.02).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path


class Events:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", buffering=1)

    def __call__(self, type_: str, **fields) -> None:
        self.f.write(json.dumps({"ts": time.time(), "type": type_, **fields}) + "\n")


def checkpoint(spec: dict, step: int, emit: Events) -> None:
    path = Path(spec["checkpoint_dir"]) / f"step-{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "state.json").write_text(json.dumps({"step": step}))
    emit("checkpoint", step=step, path=str(path))


def last_checkpoint(spec: dict) -> int:
    steps = [int(p.name.split("-")[1]) for p in Path(spec["checkpoint_dir"]).glob("step-*")]
    return max(steps, default=0) if spec.get("resume") else 0


def write_output(spec: dict, incomplete: bool) -> None:
    out = Path(spec["output_dir"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(spec["model"]["base"], tmp)
    if incomplete:
        (tmp / "model.safetensors").unlink()
    meta = {"name": spec.get("name"), "recipe": spec["recipe"], "parent": spec["model"]["base"],
            "config": {"hyperparameters": spec["hyperparameters"]}, "data_hash": "standin",
            "metrics": {"final_loss": 1.0, "tokens": 1234}}
    (tmp / "llmsvc.json").write_text(json.dumps(meta))
    os.replace(tmp, out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--events", required=True)
    args = p.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    emit, name = Events(args.events), spec.get("name") or ""
    step = last_checkpoint(spec)

    def on_term(signum, frame):
        checkpoint(spec, step, emit)
        emit("status", status="cancelled", message="stopped by SIGTERM")
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    emit("status", status="running", message=f"resuming at step {step}" if step else "")
    step_s = float(os.environ.get("STANDIN_STEP_S", "0.02"))
    total = spec["hyperparameters"]["steps"]
    while step < total:
        time.sleep(step_s)
        step += 1
        emit("metrics", step=step, loss=2.0 / step, grad_norm=1.0, lr=1e-4, tokens_per_s=1000.0 + step)
        if "crash" in name and step == 2:
            emit("message", level="error", message="CUDA error: out of memory (simulated)")
            emit("status", status="failed", message="out of memory at step 2")
            return 1
        if spec.get("checkpoint_every") and step % spec["checkpoint_every"] == 0:
            checkpoint(spec, step, emit)
    write_output(spec, "incomplete" in name)
    emit("status", status="succeeded", message="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
