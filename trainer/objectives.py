"""Objectives: each returns the *sum* of its loss over a micro-batch (the loop normalises).

- :func:`lm_loss`: next-token cross-entropy on the labelled tokens (pretraining, SFT, LoRA).
- :class:`DPOLoss`: Direct Preference Optimization (Rafailov et al. 2023) against a frozen reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    # use_cache=False matters: with no cache, transformers reads document boundaries from
    # position_ids and masks attention block-diagonally (packed documents never see each other).
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits.float()  # (B, T, V); fp32 for a stable log-softmax under bf16 autocast
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum")
    return loss, {}


def sequence_logps(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token | earlier tokens) over the masked (answer) tokens of each row: (N,)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (N, T-1, V) predicts ids[:, 1:]
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    return (logps * mask[:, 1:]).sum(-1)


class DPOLoss:
    """-log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]) per pair.

    The batch stacks the chosen answers (first half) over the rejected ones. The
    reference model is the starting policy, frozen: the implicit reward of an
    answer is β times how much more likely the policy makes it than the reference.
    """

    def __init__(self, reference: torch.nn.Module, beta: float) -> None:
        self.reference, self.beta = reference, beta
        self.reference.eval().requires_grad_(False)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        ids, mask = batch["input_ids"], batch["answer_mask"]
        policy = sequence_logps(model, ids, mask)  # (2B,)
        with torch.no_grad():
            ref = sequence_logps(self.reference, ids, mask)
        b = ids.shape[0] // 2
        chosen_reward = self.beta * (policy[:b] - ref[:b])  # (B,)
        rejected_reward = self.beta * (policy[b:] - ref[b:])
        margin = chosen_reward - rejected_reward
        loss = -F.logsigmoid(margin).sum()
        return loss, {"reward_accuracy": (margin > 0).sum().item(), "reward_margin": margin.sum().item()}
