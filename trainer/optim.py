"""The optimizers (AdamW, or Muon for the hidden matrices) and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.adamw import adamw

from .spec import Hyperparameters

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic Newton-Schulz polynomial Muon uses (Jordan et al., 2024): it pushes every singular value of a
matrix scaled to norm 1 towards 1 in five steps, fast and roughly, which is all the update needs."""


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About ``U Vᵀ`` for ``g = U S Vᵀ``: the same directions, every singular value near 1. ``g`` may be a
    stack of matrices of one shape (``(..., rows, cols)``), each orthogonalised on its own."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT  # the small side's Gram matrix: (rows, rows) for a wide x
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked ``muon``, AdamW for the rest (embeddings, the LM head, norms: torch's own
    functional ``adamw`` step), in one optimizer so one schedule and one checkpoint cover both.

    A Muon step takes the Nesterov momentum of the gradient and replaces it with its orthogonalisation
    (:func:`orthogonalize`): every direction of the matrix moves by the same amount, so directions the gradient
    rarely points in are not starved as they are under AdamW. The update is scaled by
    ``sqrt(max(1, rows / cols))`` so that tall and wide matrices move alike."""

    def __init__(self, groups: list[dict], *, lr: float, momentum: float = 0.95, betas=(0.9, 0.95),
                 eps: float = 1e-8, ns_steps: int = 5) -> None:
        defaults = {"lr": lr, "weight_decay": 0.0, "momentum": momentum, "betas": betas, "eps": eps,
                    "ns_steps": ns_steps, "muon": False}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd = group["lr"], group["weight_decay"]
            if group["muon"]:
                if wd:
                    torch._foreach_mul_(params, 1 - lr * wd)
                self._muon(group, params)
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if not state:  # the state torch.optim.AdamW keeps, so the step is torch's own
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            b1, b2 = group["betas"]
            adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                  [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                  amsgrad=False, beta1=b1, beta2=b2, lr=lr, weight_decay=wd, eps=group["eps"],
                  maximize=False)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        """Nesterov momentum, then one batched orthogonalisation for each shape of matrix (a layer's q and o
        projections are one stack, and so on: a few large matmuls instead of many small ones)."""
        m = group["momentum"]
        grads = [p.grad for p in params]
        bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - m)
        nesterov = torch._foreach_lerp(grads, bufs, m)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for shape, idx in by_shape.items():
            rows = shape[0]
            cols = nesterov[idx[0]].numel() // rows
            ortho = orthogonalize(torch.stack([nesterov[i].view(rows, cols) for i in idx]), group["ns_steps"])
            scale = -group["lr"] * max(1.0, rows / cols) ** 0.5
            torch._foreach_add_([params[i] for i in idx], [o.view(shape) for o in ortho.unbind(0)], alpha=scale)


def _is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """The matrices inside the decoder layers; not the embeddings or the LM head (a look-up table and a
    classifier, which Muon is not for) and no 1-D tensor."""
    return p.ndim == 2 and "embed" not in name and "lm_head" not in name


def _is_attention(name: str) -> bool:
    """An attention projection (``self_attn.{q,k,v,o}_proj`` in Llama's naming)."""
    return "attn" in name


def build_optimizer(model: torch.nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    """Matrices (linear weights, embeddings) decay; norms and biases (1-D tensors) never do. With
    ``hp.optimizer == "muon"`` the decoder layers' matrices are updated by Muon: the MLPs' at ``hp.muon_lr``, the
    attention projections' at ``hp.muon_attention_lr`` (``muon_lr`` if unset)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    no_decay = [p for p in params if p.ndim < 2]
    if hp.optimizer == "muon":
        hidden = [(n, p) for n, p in named if _is_hidden_matrix(n, p)]
        split = hp.muon_attention_lr is not None  # else one group, as before the attention had its own rate
        rates = [(hp.muon_lr, [p for n, p in hidden if not (split and _is_attention(n))])]
        if split:
            rates.append((hp.muon_attention_lr, [p for n, p in hidden if _is_attention(n)]))
        other = [p for n, p in named if p.ndim >= 2 and not _is_hidden_matrix(n, p)]
        # decay at AdamW's rate per step (lr · weight_decay), whatever Muon's own learning rate
        groups = [*({"params": ps, "weight_decay": hp.weight_decay * hp.lr / lr, "muon": True, "lr": lr}
                    for lr, ps in rates),
                  {"params": other, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return Muon([g for g in groups if g["params"]], lr=hp.lr, betas=hp.betas)
    decay = [p for p in params if p.ndim >= 2]
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
