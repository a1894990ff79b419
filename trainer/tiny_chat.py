"""Build the ``tiny-chat`` default model in-process: what ``llmsvc up`` calls on first run.

An interrupted build resumes from its last checkpoint next time (they are kept
in ``<out_dir>.work`` until the model is published).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from .events import EventSink
from .parallelize import Dist
from .spec import parse_spec

Progress = Callable[[int, int, str], None]


def build(out_dir: str | Path, progress: Progress | None = None, *, seed: int = 0,
          overrides: dict | None = None) -> Path:
    """Train tiny-chat and publish it atomically at ``out_dir``; ``progress(step, total, label)`` is optional.

    ``overrides`` are merged into the spec (e.g. ``{"hyperparameters": {"steps": 50}}`` for a quick build).
    """
    from .job import run_job

    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".work")
    raw = {"recipe": "tiny-chat", "output_dir": str(out_dir), "checkpoint_dir": str(work / "checkpoints"),
           "checkpoint_every": 200, "keep_checkpoints": 1, "hyperparameters": {"seed": seed}}
    for key, value in (overrides or {}).items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    spec = parse_spec(raw)
    steps = spec.hyperparameters.steps
    total = steps + 2
    report = progress or (lambda *_: None)
    report(0, total, "preparing synthetic data")

    def on_step(step: int, _total: int) -> None:
        label = f"training step {step}/{steps}" if step < steps else "evaluating held-out tasks"
        report(step, total, label)

    sink = EventSink(work / "events.jsonl", job="tiny-chat")
    try:
        run_job(spec, d=Dist(), sink=sink, on_step=on_step, show_progress=False)
    finally:
        sink.close()
    shutil.rmtree(work, ignore_errors=True)
    report(total, total, "done")
    return out_dir
