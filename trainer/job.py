"""One training job from a validated spec to a published model directory."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from . import recipes
from .events import EventSink
from .export import write_model_dir
from .loop import LoopConfig, Trainer
from .model import flops_per_token, peak_flops
from .optim import build_optimizer, build_scheduler
from .parallelize import Dist, parallelize, uncompile, unwrap
from .recipes.common import JobContext
from .spec import Spec


def work_dir_for(spec: Spec) -> Path:
    """Prepared data lives beside the checkpoints (reused on resume), else beside the output (removed after)."""
    if spec.checkpoint_dir:
        return Path(spec.checkpoint_dir) / "data"
    out = Path(spec.output_dir)
    return out.with_name(out.name + ".work")


def amp_dtype(spec: Spec, device: torch.device) -> torch.dtype | None:
    choice = spec.hyperparameters.dtype
    if choice == "bfloat16" or (choice == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _step_bar(show: bool, on_step: Callable[[int, int], None] | None):
    if not show:
        return on_step, None
    from tqdm import tqdm

    bar = tqdm(desc="train", unit="step", file=sys.stderr, mininterval=1.0)

    def update(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()
        if on_step:
            on_step(step, total)

    return update, bar


def run_job(spec: Spec, *, d: Dist, sink: EventSink, stop_requested: Callable[[], bool] = lambda: False,
            on_step: Callable[[int, int], None] | None = None, show_progress: bool = True) -> Path:
    hp = spec.hyperparameters
    random.seed(hp.seed)
    np.random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    work_dir = work_dir_for(spec)
    ctx = JobContext(spec=spec, d=d, sink=sink, work_dir=work_dir, show_progress=show_progress and d.is_main)
    setup = recipes.setup(spec.recipe, ctx)
    model_cfg = setup.model.config
    n_params = sum(p.numel() for p in setup.model.parameters())
    sink.message(f"{spec.recipe}: {n_params / 1e6:.2f}M parameters, {d.world_size} process(es) on {d.device}")

    model = parallelize(setup.model, d, mode=hp.parallel, activation_checkpointing=hp.activation_checkpointing,
                        compile=hp.compile)
    optimizer = build_optimizer(model, hp)
    scheduler = build_scheduler(optimizer, hp)
    cfg = LoopConfig(steps=hp.steps, global_batch=hp.batch_size, grad_accum=hp.grad_accum, grad_clip=hp.grad_clip,
                     seed=hp.seed, seq_len=hp.seq_len, amp_dtype=amp_dtype(spec, d.device), log_every=hp.log_every,
                     checkpoint_dir=Path(spec.checkpoint_dir) if spec.checkpoint_dir else None,
                     checkpoint_every=spec.checkpoint_every, keep_checkpoints=spec.keep_checkpoints,
                     resume=spec.resume, eval_batches=hp.eval_batches,
                     checkpoint_meta={"spec": spec.model_dump(mode="json")})
    step_cb, bar = _step_bar(show_progress and d.is_main, on_step)
    trainer = Trainer(cfg, model=model, optimizer=optimizer, scheduler=scheduler, batches=setup.train,
                      objective=setup.objective, d=d, sink=sink, flops_per_token=flops_per_token(model_cfg, hp.seq_len),
                      peak_flops=peak_flops(d.device), stop_requested=stop_requested, on_step=step_cb)
    try:
        result = trainer.run()
    finally:
        if bar is not None:
            bar.close()
    metrics = {"final_loss": round(result.final_loss, 6), "steps": result.steps, "tokens": result.tokens,
               "train_seconds": round(result.train_seconds, 2), "parameters": n_params,
               "trainable_fraction": round(setup.trainable_fraction, 6)}
    trained_tokens = result.tokens - (result.resumed_from or 0) * hp.batch_size * hp.seq_len
    metrics["tokens_per_s"] = round(trained_tokens / max(result.train_seconds, 1e-9), 1)
    metrics.update({k: round(v, 6) for k, v in result.extras.items()})
    if setup.validation is not None:
        metrics["eval_loss"] = round(trainer.evaluate(setup.validation), 6)
        sink.message(f"eval_loss {metrics['eval_loss']}")
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = Path(spec.output_dir)
    if d.is_main:
        if setup.after_training is not None:
            metrics.update(setup.after_training(uncompile(unwrap(model))))
        write_model_dir(output_dir=out, setup=setup, state_dict=state_dict, llmsvc={
            "name": spec.model_name, "recipe": spec.recipe, "parent": setup.parent,
            "config": spec.model_dump(mode="json"), "data_hash": setup.data["data_hash"], "metrics": metrics,
            "data": {k: setup.data.get(k) for k in ("n_docs", "n_tokens", "n_target_tokens", "cleaning")},
            **inherited_serving(setup.parent),
            **setup.extra_llmsvc,
        })
        sink.message(f"final metrics: {metrics}")
        if not spec.checkpoint_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    d.barrier()
    return out


def inherited_serving(parent: str | None) -> dict:
    """What a fine-tune keeps from its parent's ``llmsvc.json`` for serving: its tool parser (the fine-tune
    keeps the parent's tokenizer and chat template, so the parent's calls are its calls)."""
    if not parent:
        return {}
    try:
        meta = json.loads((Path(parent) / "llmsvc.json").read_text())
    except (OSError, ValueError):
        return {}
    parser = meta.get("tool_parser") if isinstance(meta, dict) else None
    return {"tool_parser": parser} if isinstance(parser, str) and parser else {}
