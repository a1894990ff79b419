"""Preference pairs for DPO: fixed-length (chosen, rejected) rows in memmaps.

``pairs.tokens.bin`` holds int32 ids of shape (N, 2, seq_len), ``pairs.mask.bin``
the answer mask of the same shape (uint8); row 0 is the chosen answer, row 1
the rejected one. Sequences longer than ``seq_len`` are cut at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class PairWriter:
    def __init__(self, out_dir: Path, *, seq_len: int, pad_id: int) -> None:
        self.out_dir, self.seq_len, self.pad_id = Path(out_dir), seq_len, pad_id
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tok = open(self.out_dir / "pairs.tokens.bin", "wb")
        self._mask = open(self.out_dir / "pairs.mask.bin", "wb")
        self.n = self.truncated = 0

    def _row(self, ids: list[int], mask: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) > self.seq_len:
            self.truncated += 1
            ids, mask = ids[:self.seq_len], mask[:self.seq_len]
        t = np.full(self.seq_len, self.pad_id, dtype=np.int32)
        m = np.zeros(self.seq_len, dtype=np.uint8)
        t[:len(ids)], m[:len(mask)] = ids, mask
        return t, m

    def add(self, chosen: tuple[list[int], list[int]], rejected: tuple[list[int], list[int]]) -> None:
        (tc, mc), (tr, mr) = self._row(*chosen), self._row(*rejected)
        if not mc.any() or not mr.any():  # an answer cut away entirely teaches nothing
            self.truncated += 1
            return
        self._tok.write(np.stack([tc, tr]).tobytes())
        self._mask.write(np.stack([mc, mr]).tobytes())
        self.n += 1

    def finish(self, **extra) -> dict:
        self._tok.close()
        self._mask.close()
        manifest = {"format": 1, "n_pairs": self.n, "seq_len": self.seq_len, "truncated_pairs": self.truncated,
                    "n_docs": self.n, **extra}
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest


class PairData:
    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.manifest = json.loads((folder / "manifest.json").read_text())
        n, t = self.manifest["n_pairs"], self.manifest["seq_len"]
        self.tokens = np.memmap(folder / "pairs.tokens.bin", dtype=np.int32, mode="r", shape=(n, 2, t))
        self.mask = np.memmap(folder / "pairs.mask.bin", dtype=np.uint8, mode="r", shape=(n, 2, t))

    def __len__(self) -> int:
        return self.manifest["n_pairs"]

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, answer mask), each (2, seq_len): chosen then rejected."""
        return np.asarray(self.tokens[index], dtype=np.int64), np.asarray(self.mask[index], dtype=np.int64)
