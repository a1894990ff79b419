"""The suites the eval service runs, by name."""

from __future__ import annotations

from .base import RunContext, Suite, SuiteError, SuiteParams, SuiteResult
from .exact_match import GSM8KSuite, TinyChatSuite
from .harness import HarnessSuite
from .multiple_choice import MultipleChoiceSuite
from .perplexity import PerplexitySuite

SUITES: dict[str, type[Suite]] = {s.name: s for s in (
    PerplexitySuite, TinyChatSuite, GSM8KSuite, MultipleChoiceSuite, HarnessSuite)}


def build_suite(name: str, params: dict, data_dirs) -> Suite:
    """Validate ``params`` and load the suite's data; :class:`SuiteError` names what is wrong."""
    from pydantic import ValidationError

    cls = SUITES.get(name)
    if cls is None:
        raise SuiteError(f"unknown suite '{name}'; known suites: {', '.join(sorted(SUITES))}")
    try:
        typed = cls.Params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "params"
        raise SuiteError(f"invalid params for suite '{name}': {where}: {first.get('msg')}") from None
    return cls(typed, data_dirs)


__all__ = ["SUITES", "RunContext", "Suite", "SuiteError", "SuiteParams", "SuiteResult", "build_suite"]
