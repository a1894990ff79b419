"""Metrics with their uncertainty: means, proportions and perplexity.

Each function returns the dict stored per metric:
``{value, stderr, ci_low, ci_high, higher_is_better}``; intervals are 95%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964


def metric(value: float, stderr: float, low: float, high: float, higher_is_better: bool) -> dict:
    return {"value": float(value), "stderr": float(stderr), "ci_low": float(low), "ci_high": float(high),
            "higher_is_better": higher_is_better}


def mean(values: Sequence[float], higher_is_better: bool = True) -> dict:
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    return metric(m, se, m - Z95 * se, m + Z95 * se, higher_is_better)


def proportion(hits: Sequence[bool]) -> dict:
    """Accuracy with the Wilson score interval (stays inside [0, 1], sane at 0 and n)."""
    n = len(hits)
    if n == 0:
        raise ValueError("no values")
    p = sum(1 for h in hits if h) / n
    se = math.sqrt(p * (1 - p) / n)
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return metric(p, se, max(0.0, centre - half), min(1.0, centre + half), True)


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> tuple[dict, dict]:
    """Token-weighted mean NLL over documents and ``exp`` of it.

    The stderr is that of a ratio estimator (sum of NLL over sum of tokens),
    with documents as the sampling unit; the perplexity interval is the NLL
    interval mapped through ``exp``.
    """
    n, total = len(nll_sums), sum(token_counts)
    if n == 0 or total == 0:
        raise ValueError("no tokens")
    r = sum(nll_sums) / total
    if n > 1:
        t_bar = total / n
        resid = [(s - r * t) / t_bar for s, t in zip(nll_sums, token_counts, strict=True)]
        se = math.sqrt(sum(x * x for x in resid) / (n * (n - 1)))
    else:
        se = 0.0
    nll = metric(r, se, r - Z95 * se, r + Z95 * se, False)
    ppl = metric(math.exp(r), math.exp(r) * se, math.exp(r - Z95 * se), math.exp(r + Z95 * se), False)
    return nll, ppl
