"""Quality filters for pretraining text, each counting what it drops (heuristics in the spirit of Gopher/C4)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def repetition_ratio(text: str) -> float:
    """The larger of: the share of characters in repeated lines, and the share of repeated word 3-grams."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    dup_chars = 0
    if len(lines) > 1:
        counts = Counter(lines)
        dup_chars = sum(len(ln) * (c - 1) for ln, c in counts.items() if c > 1)
    line_ratio = dup_chars / max(1, sum(len(ln) for ln in lines))
    words = text.split()
    grams = list(zip(words, words[1:], words[2:], strict=False))
    gram_ratio = 0.0
    if len(grams) >= 4:
        gram_ratio = 1 - len(set(grams)) / len(grams)
    return max(line_ratio, gram_ratio)


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither letters, digits nor whitespace."""
    if not text:
        return 0.0
    symbols = sum(1 for ch in text if not (ch.isalnum() or ch.isspace()))
    return symbols / len(text)


@dataclass
class QualityFilter:
    min_chars: int = 16
    max_chars: int = 200_000
    max_repetition: float = 0.3
    max_symbol_ratio: float = 0.3
    dropped: Counter = field(default_factory=Counter)
    """How many documents each rule dropped (``too_short``, ``too_long``, ``repetitive``, ``symbols``)."""

    def reason(self, text: str) -> str | None:
        """The first rule ``text`` breaks, or None when it passes. Cheap checks first."""
        n = len(text.strip())
        if n < self.min_chars:
            return "too_short"
        if n > self.max_chars:
            return "too_long"
        if symbol_ratio(text) > self.max_symbol_ratio:
            return "symbols"
        if repetition_ratio(text) > self.max_repetition:
            return "repetitive"
        return None

    def keep(self, text: str) -> bool:
        why = self.reason(text)
        if why is not None:
            self.dropped[why] += 1
        return why is None
