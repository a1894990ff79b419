"""Helpers and fixtures for the training-job tests: tiny synthetic corpora, real jobs.

Jobs run either in-process (``trainer.run.main``, same code path as the CLI) or as real
subprocesses when a test needs signals or torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.data import synthetic

REPO = Path(__file__).resolve().parents[2]


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["type"] == "metrics"}


def final_status(events: list[dict]) -> dict:
    statuses = [e for e in events if e["type"] == "status"]
    assert statuses, f"no status event in {events}"
    return statuses[-1]


def write_spec(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_inprocess(tmp: Path, spec: dict) -> tuple[int, list[dict]]:
    """Run a job through ``trainer.run.main`` in this process; return (exit code, events)."""
    from trainer.run import main

    events = tmp / f"events-{time.monotonic_ns()}.jsonl"
    code = main(["--spec", str(write_spec(tmp, spec)), "--events", str(events), "--quiet"])
    return code, read_events(events)


def job_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def start_job(tmp: Path, spec: dict, *, nproc: int = 1, events: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """Start a job as a real process (under torchrun when ``nproc`` > 1)."""
    spec_path = write_spec(tmp, spec)
    events = events or tmp / "events.jsonl"
    args = ["-m", "trainer.run", "--spec", str(spec_path), "--events", str(events), "--quiet"]
    if nproc > 1:
        from services.cli.stack import free_port

        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
                *args]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, events


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory) -> Path:
    """A small synthetic chat corpus (copy and reverse tasks)."""
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    synthetic.write_corpus(path, 600, seed=1, tasks=["copy", "reverse"])
    return path


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A folder of plain-text documents for pretraining (blank-line separated)."""
    folder = tmp_path_factory.mktemp("text")
    import random

    rng = random.Random(0)
    for f in range(3):
        docs = []
        for _ in range(120):
            words = [rng.choice(synthetic.WORDS) for _ in range(rng.randint(8, 40))]
            docs.append(" ".join(words) + ".")
        (folder / f"part{f}.txt").write_text("\n\n".join(docs) + "\n")
    return folder


def pretrain_spec(tmp: Path, data: Path, **hp) -> dict:
    return {"recipe": "pretrain", "model": {"preset": "nano"},
            "data": {"train": str(data), "vocab_size": 400, "near_dedup": False},
            "hyperparameters": {"steps": 6, "batch_size": 4, "seq_len": 64, "lr": 3e-3, "warmup_steps": 2, **hp},
            "output_dir": str(tmp / "out"), "checkpoint_dir": str(tmp / "ckpt")}
