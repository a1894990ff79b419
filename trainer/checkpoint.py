"""Resumable checkpoints: model, optimizer, scheduler, RNG states and data position, written atomically.

A checkpoint is a folder ``step_00000042/`` holding ``state.pt`` and ``meta.json``.
It is written as ``.step_00000042.tmp`` and renamed when complete, so a folder
with a step name is always whole; a job killed mid-write leaves only a temp
folder, which the next save clears. Model and optimizer states are saved as
full (unsharded) state dicts keyed by parameter name, so a run may resume on a
different number of processes, with DDP or FSDP.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .parallelize import Dist

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(slots=True)
class Resumed:
    step: int
    """Optimizer steps already done; training continues with step ``step``."""
    tokens: int
    """Tokens trained on so far (for throughput and final metrics)."""
    losses: list[float]
    """Loss of every completed step, so the final metrics cover the whole run."""


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=lambda p: p.name)


def save(folder: str | Path, *, model, optimizer, scheduler, step: int, tokens: int, losses: list[float],
         d: Dist, keep: int, meta: dict | None = None) -> Path | None:
    """Collective: every rank calls it (FSDP gathers shards); rank 0 writes. Returns the folder on rank 0."""
    model_sd = get_model_state_dict(model, options=_FULL)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    rngs = d.gather_objects(rng_state())
    path = None
    if d.is_main:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:08d}"
        tmp = folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "rng": rngs,
                    "step": step, "tokens": tokens, "losses": losses}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "tokens": tokens, "time": time.time(),
                                                   "world_size": d.world_size, **(meta or {})}))
        path = folder / name
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return path


def load_latest(folder: str | Path | None, *, model, optimizer, scheduler, d: Dist) -> Resumed | None:
    """Restore the newest complete checkpoint into the (already parallelized) model; None if there is none."""
    ckpts = list_checkpoints(folder) if folder else []
    if not ckpts:
        return None
    # Our own file: it holds numpy RNG state and Python objects, which weights_only loading refuses.
    state = torch.load(ckpts[-1] / "state.pt", map_location="cpu", weights_only=False)
    set_model_state_dict(model, state["model"], options=_FULL)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=_FULL)
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    set_rng_state(rngs[d.rank] if d.rank < len(rngs) else rngs[0])
    return Resumed(step=state["step"], tokens=state["tokens"], losses=list(state["losses"]))
