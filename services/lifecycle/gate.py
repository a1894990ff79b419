"""The promotion gate as pure logic: one requirement, two measurements, one verdict.

A requirement names a suite (with fixed params, so runs are comparable), a
metric, an absolute ``threshold`` and a relative ``tolerance``. The candidate
passes when it meets the threshold and, if the alias already points at a
version, does not regress against it by more than the tolerance. The metric's
own ``higher_is_better`` says which way is better.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class Requirement:
    suite: str
    metric: str
    params: dict = field(default_factory=dict)
    threshold: float | None = None
    """A floor for higher-is-better metrics, a ceiling otherwise; None = no absolute bound."""
    tolerance: float = 0.0
    """Allowed relative regression against the current version (0.02 = 2% worse at most)."""

    @classmethod
    def parse(cls, raw: dict) -> Requirement:
        unknown = set(raw) - {"suite", "metric", "params", "threshold", "tolerance"}
        if unknown:
            raise ValueError(f"unknown gate keys: {', '.join(sorted(unknown))}")
        return cls(**raw)


@dataclass(slots=True)
class Check:
    suite: str
    metric: str
    candidate: float | None
    current: float | None
    threshold: float | None
    tolerance: float
    passed: bool
    reason: str
    candidate_run_id: str = ""
    current_run_id: str = ""


def evaluate(req: Requirement, candidate: dict | None, current: dict | None, *, candidate_error: str = "") -> Check:
    """``candidate`` and ``current`` are stored metric dicts (``{value, higher_is_better, …}``) or None."""
    if candidate is None:
        why = candidate_error or f"no successful '{req.suite}' run with metric '{req.metric}'"
        return Check(req.suite, req.metric, None, _value(current), req.threshold, req.tolerance, False, why)
    value, higher = candidate["value"], candidate.get("higher_is_better", True)
    better_or_equal = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    word = "at least" if higher else "at most"
    if req.threshold is not None and not better_or_equal(value, req.threshold):
        return Check(req.suite, req.metric, value, _value(current), req.threshold, req.tolerance, False,
                     f"{req.metric} {value:.4g} must be {word} {req.threshold:.4g}")
    if current is not None:
        cur = current["value"]
        slack = abs(cur) * req.tolerance
        bound = cur - slack if higher else cur + slack
        if not better_or_equal(value, bound):
            return Check(req.suite, req.metric, value, cur, req.threshold, req.tolerance, False,
                         f"{req.metric} {value:.4g} regresses beyond {req.tolerance:.1%} of the current {cur:.4g}")
    return Check(req.suite, req.metric, value, _value(current), req.threshold, req.tolerance, True, "ok")


def _value(m: dict | None) -> float | None:
    return None if m is None else m["value"]
