"""Pure logic of the eval service and the lifecycle: windows, statistics, gate, answer extraction, inputs."""

from __future__ import annotations

import asyncio
import math

import pytest

from services.eval import stats
from services.eval.config import DATA_DIR
from services.eval.suites import SuiteError, build_suite
from services.eval.suites.exact_match import extract_answer
from services.eval.suites.multiple_choice import normalize_row
from services.eval.suites.perplexity import rolling_windows
from services.lifecycle import gate
from services.lifecycle.kubernetes import deployment_patch


@pytest.mark.parametrize("n,window,stride", [(1, 2, 1), (10, 4, 3), (10, 4, 1), (100, 16, 7), (5, 1024, 1023)])
def test_rolling_windows_score_every_token_once(n, window, stride):
    scored = []
    for start, score_from, end in rolling_windows(n, window, stride):
        assert end - start <= window and start < score_from <= end
        scored += range(score_from, end)
    assert scored == list(range(1, n + 1))


def test_rolling_windows_refuse_a_stride_without_context():
    with pytest.raises(ValueError):
        rolling_windows(10, 4, 4)


def test_wilson_interval_stays_in_bounds():
    all_right = stats.proportion([True] * 5)
    assert all_right["value"] == 1.0 and all_right["ci_high"] == 1.0 and 0.4 < all_right["ci_low"] < 1.0
    half = stats.proportion([True, False] * 50)
    assert half["ci_low"] < 0.5 < half["ci_high"] and half["stderr"] == pytest.approx(0.05)


def test_perplexity_is_token_weighted():
    nll, ppl = stats.perplexity([10.0, 30.0], [10, 10])
    assert nll["value"] == pytest.approx(2.0) and ppl["value"] == pytest.approx(math.exp(2.0))
    assert ppl["ci_low"] < ppl["value"] < ppl["ci_high"] and not ppl["higher_is_better"]


PPL = gate.Requirement(suite="perplexity", metric="perplexity", threshold=100.0, tolerance=0.02)
ACC = gate.Requirement(suite="tiny_chat", metric="exact_match", threshold=0.5, tolerance=0.05)


def _m(value, higher):
    return {"value": value, "higher_is_better": higher}


@pytest.mark.parametrize("req,cand,cur,passed", [
    (PPL, 50.0, None, True),      # first promotion: only the threshold
    (PPL, 150.0, None, False),    # over the ceiling
    (PPL, 50.9, 50.0, True),      # within 2% worse
    (PPL, 51.5, 50.0, False),     # beyond 2% worse
    (PPL, 40.0, 50.0, True),      # better
    (ACC, 0.8, 0.82, True),       # within 5% lower
    (ACC, 0.7, 0.82, False),      # beyond 5% lower
    (ACC, 0.4, None, False),      # under the floor
])
def test_gate_verdicts(req, cand, cur, passed):
    higher = req is ACC
    check = gate.evaluate(req, _m(cand, higher), _m(cur, higher) if cur is not None else None)
    assert check.passed is passed, check.reason


def test_the_default_gate_passes_the_built_in_model_and_refuses_a_broken_one():
    """The default gate's ceiling: the built-in tiny-chat's perplexity on heldout.txt (about 2,200, measured on a
    fresh ``llmsvc up``) is within it, so a promotion there is judged by regression; NaN and infinite are not."""
    from services.eval.config import EvalSettings

    (req,) = [gate.Requirement.parse(r) for r in EvalSettings().gate]
    metric = {"value": 2268.0, "higher_is_better": False}
    assert gate.evaluate(req, metric, {"value": 2260.0, "higher_is_better": False}).passed
    assert "regresses" in gate.evaluate(req, metric, {"value": 2000.0, "higher_is_better": False}).reason
    for broken in (math.nan, math.inf):
        assert not gate.evaluate(req, {"value": broken, "higher_is_better": False}, None).passed


def test_gate_fails_without_a_measurement_and_says_why():
    check = gate.evaluate(PPL, None, None, candidate_error="the run failed: boom")
    assert not check.passed and "boom" in check.reason
    with pytest.raises(ValueError):
        gate.Requirement.parse({"suite": "x", "metric": "y", "treshold": 1})


@pytest.mark.parametrize("text,expected", [
    ("so 3 + 5 = 8 apples.\n#### 8", ("8", "strict")),
    ("The answer is 1,200 dollars.", ("1200", "flexible")),
    ("#### -3.0", ("-3", "strict")),
    ("no idea", (None, "none")),
])
def test_gsm8k_answer_extraction(text, expected):
    assert extract_answer(text) == expected


def test_multiple_choice_row_formats():
    arc = {"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    assert normalize_row(arc) == ("Question: Q?\nAnswer:", ["a", "b"], 1)
    assert normalize_row({"ctx": "He", "endings": ["ran", "sat"], "label": 0}) == ("He", ["ran", "sat"], 0)
    assert normalize_row({"question": "Q?", "choices": ["x", "y"], "answer": 1})[2] == 1


def test_suite_inputs_are_checked_before_anything_runs(tmp_path):
    dirs = [DATA_DIR, tmp_path]
    with pytest.raises(SuiteError, match="unknown suite"):
        build_suite("nope", {}, dirs)
    with pytest.raises(SuiteError, match="windw"):
        build_suite("perplexity", {"windw": 3}, dirs)
    with pytest.raises(SuiteError, match="not found"):
        build_suite("perplexity", {"dataset": str(DATA_DIR.parents[2] / "pyproject.toml")}, dirs)
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(SuiteError, match="at least two"):
        build_suite("multiple_choice", {"dataset": "bad.jsonl"}, dirs)
    a = build_suite("perplexity", {"dataset": "heldout.txt"}, dirs)
    b = build_suite("perplexity", {"dataset": "heldout.txt", "window": 64}, dirs)
    assert a.fingerprint() != b.fingerprint()  # different params are never compared by the gate


def test_shipped_datasets_load():
    for suite in ("perplexity", "tiny_chat", "gsm8k", "multiple_choice", "lm_eval"):
        build_suite(suite, {}, [DATA_DIR])


def test_kubernetes_rollout_patch():
    patch = deployment_patch(alias="tiny-chat", version="tiny-chat-v7", model_dir="/models/tiny-chat/7")
    assert patch["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    container = patch["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["name"] == "worker" and env["LLMSVC_WORKER_SERVED_MODEL_NAME"] == "tiny-chat-v7"
    assert env["LLMSVC_WORKER_MODEL_ALIASES"] == '["tiny-chat"]'
    assert patch["spec"]["template"]["metadata"]["annotations"]["llmsvc.io/model-version"] == "tiny-chat-v7"


def test_rollback_and_unknown_version_on_postgres(eval_pg_url):
    """The registry side of the lifecycle on real PostgreSQL (no workers: a registry-only rollout)."""
    from services.common.db import registry
    from services.common.db.engine import make_engine, session_factory
    from services.common.db.migrate import upgrade
    from services.lifecycle.promotion import Promoter, PromotionError
    from services.lifecycle.rollout import RegistryOnlyRollout

    upgrade(eval_pg_url)

    async def go():
        engine = make_engine(eval_pg_url)
        sessions = session_factory(engine)
        try:
            async with sessions() as s:
                v1 = await registry.register_version(s, "rb-test", "/m/1")
                v2 = await registry.register_version(s, "rb-test", "/m/2")
                await registry.set_alias(s, "rb-alias", v1.id, actor="t")
                await registry.set_alias(s, "rb-alias", v2.id, actor="t")
            p = Promoter(sessions, runs=None, requirements=[], rollout=RegistryOnlyRollout())
            out = await p.rollback("rb-alias", actor="key-1")
            assert out.promoted and out.version == v1.id and out.previous_version == v2.id
            with pytest.raises(PromotionError, match="not registered"):
                await p.promote("rb-alias", "rb-test-v99", actor="key-1")
            with pytest.raises(PromotionError, match="does not exist"):
                await p.rollback("no-such-alias", actor="key-1")
            async with sessions() as s:
                assert (await registry.resolve(s, "rb-alias")).id == v1.id
        finally:
            await engine.dispose()

    asyncio.run(go())
