"""Which samples each rank trains on at each step, and how they become tensors.

The order is a pure function of (seed, step): sample k of the run is
``perm_e[k mod N]`` with ``e = k div N`` and ``perm_e`` a seeded permutation.
So the data position of a checkpoint is just its step, a resumed run sees
exactly the samples the uninterrupted one would have, and a global batch holds
the same samples whatever the number of processes. A data set may open with a
lead-in (:class:`LeadInBatches`): its samples come first, in their own order,
and the permuted data set after them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .data.pack import PackedData
from .data.preference import PairData


class Batches(Protocol):
    def __len__(self) -> int: ...
    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]: ...


class Order:
    """Run sample ``k`` to data-set index: ``n + k`` for the ``lead`` lead-in samples, then the seeded
    permutations of ``0 .. n - 1``."""

    def __init__(self, n: int, seed: int, lead: int = 0) -> None:
        self.n, self.seed, self.lead = n, seed, lead
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def samples(self, start: int, count: int) -> np.ndarray:
        """Dataset indices of run samples ``start .. start + count``."""
        return np.array([self._index(k) for k in range(start, start + count)])

    def _index(self, k: int) -> int:
        if k < self.lead:
            return self.n + k
        epoch, at = divmod(k - self.lead, self.n)
        return int(self._permutation(epoch)[at])


def micro_slices(step: int, global_batch: int, rank: int, world: int, accum: int) -> list[tuple[int, int]]:
    """(start, count) in run-sample numbering of each of this rank's micro-batches at ``step``.

    Micro-batch ``a`` of rank ``r`` takes slot ``a * world + r``, so the slots of
    all ranks and micro-steps tile the global batch exactly.
    """
    micro = global_batch // (world * accum)
    base = step * global_batch
    return [(base + (a * world + rank) * micro, micro) for a in range(accum)]


class WindowBatches:
    """Causal-LM windows: inputs, labels (-100 where no loss), per-document position ids."""

    def __init__(self, data: PackedData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return collate_windows([self.data.get(int(i)) for i in indices])


def collate_windows(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """(tokens, loss mask, position ids) windows of T+1 tokens as a causal-LM batch."""
    tokens = torch.from_numpy(np.stack([r[0] for r in rows]))  # (B, T+1)
    mask = torch.from_numpy(np.stack([r[1] for r in rows]))
    positions = torch.from_numpy(np.stack([r[2] for r in rows]))
    # A token is a target if the data says so and it does not open a document (nothing of its
    # document is visible before it).
    target = (mask[:, 1:] > 0) & (positions[:, 1:] > 0)
    labels = torch.where(target, tokens[:, 1:], torch.full_like(tokens[:, 1:], -100))
    return {"input_ids": tokens[:, :-1], "labels": labels, "position_ids": positions[:, :-1],
            "n_targets": target.sum()}


class LeadInBatches:
    """Windows of ``main`` preceded by ``lead`` windows that the run trains on first, in order (a
    curriculum: tiny-chat's first steps are copying drills, see :func:`trainer.data.synthetic.induction_windows`).

    ``len`` is the main data set's; indices from ``len`` on are the lead-in's (what :class:`Order` gives
    for the first ``lead_in`` run samples)."""

    def __init__(self, main: WindowBatches, lead: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self.main, self.lead = main, lead
        self.lead_in = len(lead)

    def __len__(self) -> int:
        return len(self.main)

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        n = len(self.main)
        return collate_windows([self.lead[int(i) - n] if i >= n else self.main.data.get(int(i)) for i in indices])


class PairBatches:
    """DPO pairs: chosen and rejected answers stacked as (2B, T) for one forward pass."""

    def __init__(self, data: PairData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        rows = [self.data.get(int(i)) for i in indices]
        tokens = torch.from_numpy(np.stack([r[0] for r in rows]))  # (B, 2, T)
        mask = torch.from_numpy(np.stack([r[1] for r in rows]))
        b, _, t = tokens.shape
        # Order (chosen of every pair, then rejected of every pair): halves split cleanly after the forward.
        tokens = tokens.transpose(0, 1).reshape(2 * b, t)
        mask = mask.transpose(0, 1).reshape(2 * b, t)
        return {"input_ids": tokens, "answer_mask": mask, "n_targets": torch.tensor(b)}
