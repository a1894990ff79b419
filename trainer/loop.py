"""The training loop: accumulation, clipping, schedule, logging, checkpoints and cancellation.

It knows nothing of recipes: a recipe hands it a parallelized model, the
samples (:class:`~trainer.batches.Batches`) and an objective that returns the
*sum* of the loss over a micro-batch. The loop divides by the number of
targets in the whole global batch, so the gradient is the same on 1 or N
processes and with any split into micro-batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from . import checkpoint
from .batches import Batches, Order, micro_slices
from .events import EventSink
from .parallelize import Dist, no_sync


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """(sum of the loss over the batch's targets, extra sums to report, e.g. correct preferences)."""


class Cancelled(Exception):
    """The job was asked to stop (SIGTERM); a checkpoint was saved if a checkpoint folder is set."""

    def __init__(self, step: int, path: Path | None) -> None:
        super().__init__(f"cancelled at step {step}" + (f"; checkpoint {path}" if path else ""))
        self.step, self.path = step, path


@dataclass(kw_only=True, slots=True)
class LoopConfig:
    steps: int
    """Optimizer steps in the whole run (a resumed run continues towards the same number)."""
    global_batch: int
    """Samples per optimizer step over all ranks and micro-steps."""
    grad_accum: int = 1
    grad_clip: float = 1.0
    seed: int = 0
    seq_len: int = 256
    """Tokens a sample (for tokens/s)."""
    amp_dtype: torch.dtype | None = None
    """Autocast dtype (bf16 on GPU), None for full fp32."""
    log_every: int = 1
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    eval_batches: int = 8
    checkpoint_meta: dict = field(default_factory=dict)
    """Written into each checkpoint's meta.json (the spec), for people reading the folder."""


@dataclass(slots=True)
class TrainResult:
    steps: int
    tokens: int
    losses: list[float]
    train_seconds: float
    extras: dict[str, float]
    resumed_from: int | None

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 10% of steps (at least one): less noisy than the very last step."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return float(sum(tail) / len(tail))


class Trainer:
    def __init__(self, cfg: LoopConfig, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, batches: Batches, objective: Objective, d: Dist, sink: EventSink,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 stop_requested: Callable[[], bool] = lambda: False,
                 on_step: Callable[[int, int], None] | None = None) -> None:
        world_micro = d.world_size * cfg.grad_accum
        if cfg.global_batch % world_micro:
            raise ValueError(f"batch_size {cfg.global_batch} must be divisible by processes x grad_accum "
                             f"({d.world_size} x {cfg.grad_accum})")
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.batches, self.objective, self.d, self.sink = batches, objective, d, sink
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.stop_requested, self.on_step = stop_requested, on_step or (lambda s, t: None)
        self.order = Order(len(batches), cfg.seed, lead=getattr(batches, "lead_in", 0))

    def _autocast(self):
        if self.cfg.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.cfg.amp_dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.d.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, step: int) -> tuple[float, float, dict]:
        """One optimizer step; returns (mean loss, grad norm before clipping, extra means)."""
        cfg, d = self.cfg, self.d
        slices = micro_slices(step, cfg.global_batch, d.rank, d.world_size, cfg.grad_accum)
        micro = [self.batches.collate(self.order.samples(a, n)) for a, n in slices]
        # Targets in the whole global batch: the denominator of the mean loss on every rank.
        total = d.all_sum([float(sum(int(b["n_targets"]) for b in micro))])[0]
        if total == 0:
            raise RuntimeError(f"step {step}: no loss targets in the global batch (is the data all prompts?)")
        loss_sum, extras = 0.0, {}
        for i, batch in enumerate(micro):
            batch = self._to_device(batch)
            with no_sync(self.model, skip=i < len(micro) - 1), self._autocast():
                loss, extra = self.objective(self.model, batch)
            # DDP/FSDP average gradients over ranks; scaling by world size turns that into a sum.
            (loss * (d.world_size / total)).backward()
            loss_sum += loss.detach().item()  # CPU-GPU sync point, once per micro-step
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v)
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        keys = sorted(extras)
        sums = d.all_sum([loss_sum] + [extras[k] for k in keys])
        return sums[0] / total, grad_norm, {k: v / total for k, v in zip(keys, sums[1:], strict=True)}

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    def _save(self, step: int, tokens: int, losses: list[float]) -> Path | None:
        path = checkpoint.save(self.cfg.checkpoint_dir, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, step=step, tokens=tokens, losses=losses, d=self.d,
                               keep=self.cfg.keep_checkpoints, meta=self.cfg.checkpoint_meta)
        if path is not None:
            self.sink.checkpoint(step, path)
        return path

    def run(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        start, tokens, losses, resumed = 0, 0, [], None
        if cfg.resume and cfg.checkpoint_dir:
            state = checkpoint.load_latest(cfg.checkpoint_dir, model=self.model, optimizer=self.optimizer,
                                           scheduler=self.scheduler, d=d)
            if state is not None:
                start, tokens, losses, resumed = state.step, state.tokens, state.losses, state.step
                self.sink.message(f"resumed from the checkpoint at step {state.step}")
        if d.any(self.stop_requested()):  # also tells the signal handler that training has begun
            raise Cancelled(start, None)
        self.model.train()
        tokens_per_step = cfg.global_batch * cfg.seq_len
        extras: dict[str, float] = {}
        t_run = time.perf_counter()
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            loss, grad_norm, extras = self.train_step(step)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step + 1}; lower the learning rate")
            dt = time.perf_counter() - t0
            tokens += tokens_per_step
            losses.append(loss)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                tps = tokens_per_step / dt
                mfu = tps * self.flops_per_token / (self.peak_flops * d.world_size) \
                    if self.peak_flops and self.flops_per_token else None
                self.sink.metrics(done, loss=round(loss, 6), grad_norm=round(grad_norm, 6),
                                  lr=self.scheduler.get_last_lr()[0], tokens_per_s=round(tps, 1),
                                  mfu=round(mfu, 4) if mfu is not None else None, tokens=tokens,
                                  **{k: round(v, 6) for k, v in extras.items()})
            self.on_step(done, cfg.steps)
            if cfg.checkpoint_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                self._save(done, tokens, losses)
            if d.any(self.stop_requested()):  # every rank must agree, or the others would hang in a collective
                path = self._save(done, tokens, losses) if cfg.checkpoint_dir else None
                raise Cancelled(done, path)
        return TrainResult(steps=cfg.steps, tokens=tokens, losses=losses,
                           train_seconds=time.perf_counter() - t_run, extras=extras, resumed_from=resumed)

    @torch.no_grad()
    def evaluate(self, batches: Batches) -> float:
        """Mean loss on the first ``eval_batches`` global batches of ``batches`` (in file order)."""
        cfg, d = self.cfg, self.d
        self.model.eval()
        n = min(len(batches), cfg.eval_batches * cfg.global_batch)
        mine = np.arange(n)[d.rank::d.world_size]
        micro = max(1, cfg.global_batch // (d.world_size * cfg.grad_accum))
        loss_sum = count = 0.0
        # FSDP needs every rank in every forward: all ranks run the same number of chunks.
        chunks = math.ceil(math.ceil(n / d.world_size) / micro)
        for c in range(chunks):
            idx = mine[c * micro:(c + 1) * micro]
            if len(idx) == 0:
                idx, weight = mine[:1] if len(mine) else np.arange(1), 0.0  # keep collectives in step
            else:
                weight = 1.0
            batch = self._to_device(batches.collate(idx))
            with self._autocast():
                loss, _ = self.objective(self.model, batch)
            loss_sum += weight * loss.item()
            count += weight * float(batch["n_targets"])
        total_loss, total_count = d.all_sum([loss_sum, count])
        self.model.train()
        return total_loss / max(total_count, 1.0)
