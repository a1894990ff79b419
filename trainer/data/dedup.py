"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash LSH via datasketch).

Both keep the first occurrence and drop later ones, in one streaming pass.
Memory grows with the number of *distinct* documents (16 bytes each for the
exact set; one MinHash signature each for LSH), not with their size.
"""

from __future__ import annotations

import hashlib
import re

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    return _WS.sub(" ", text.strip().lower())


class ExactDedup:
    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.dropped = 0

    def keep(self, text: str) -> bool:
        digest = hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()
        if digest in self._seen:
            self.dropped += 1
            return False
        self._seen.add(digest)
        return True


class NearDedup:
    """Drops a document whose estimated Jaccard similarity to one kept earlier exceeds ``threshold``.

    Shingles are word n-grams (lower-cased); documents shorter than ``ngram``
    words use their words as shingles.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._n = 0
        self.dropped = 0

    def _signature(self, text: str):
        from datasketch import MinHash

        words = _WORD.findall(text.lower())
        k = self.ngram if len(words) >= self.ngram else 1
        shingles = {" ".join(words[i:i + k]).encode() for i in range(max(1, len(words) - k + 1))}
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(list(shingles))
        return m

    def keep(self, text: str) -> bool:
        sig = self._signature(text)
        if self._lsh.query(sig):
            self.dropped += 1
            return False
        self._lsh.insert(str(self._n), sig)
        self._n += 1
        return True
