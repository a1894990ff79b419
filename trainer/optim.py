"""AdamW with decoupled weight decay on matrices only, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch

from .spec import Hyperparameters


def build_optimizer(model: torch.nn.Module, hp: Hyperparameters) -> torch.optim.AdamW:
    """Matrices (linear weights, embeddings) decay; norms and biases (1-D tensors) never do."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=hp.lr, betas=hp.betas, eps=1e-8, fused=fused or None)


def lr_factor(step: int, hp: Hyperparameters) -> float:
    """Multiplier of ``hp.lr`` at optimizer step ``step`` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    if step < hp.warmup_steps:
        return (step + 1) / (hp.warmup_steps + 1)
    span = max(1, hp.steps - hp.warmup_steps)
    progress = min(1.0, (step - hp.warmup_steps) / span)
    return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, hp: Hyperparameters) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, hp))
