"""Perplexity from the eval service against an independent transformers forward pass.

The service scores through the router and a vLLM worker (prompt logprobs);
the reference runs the same checkpoint in float32 transformers over the same
text and tokenizer. They must agree within 1%, for one window per document
and for small rolling windows (the window layout is the service's own
``rolling_windows``; the forward passes are independent).
"""

from __future__ import annotations

from functools import partial

import pytest
from transformers import AutoTokenizer

from services.eval.config import DATA_DIR
from services.eval.suites.perplexity import load_documents, rolling_windows

from . import models as m
from .conftest import run_eval


@pytest.mark.parametrize("window", [0, 48])
def test_perplexity_matches_transformers(gw, lifecycle, eval_models, window):
    run = run_eval(gw, lifecycle["v1"], "perplexity", dataset="heldout.txt", window=window)
    assert run["status"] == "succeeded", run["error"]
    docs = load_documents(DATA_DIR / "heldout.txt")
    tok = AutoTokenizer.from_pretrained(eval_models["v1"])
    w = window or 10_000  # wider than every document: one forward pass each
    expected = m.reference_perplexity(eval_models["v1"], tok, docs, partial(rolling_windows, window=w, stride=w - 1))
    got = run["metrics"]["perplexity"]
    assert got["value"] == pytest.approx(expected, rel=0.01)
    assert got["ci_low"] <= got["value"] <= got["ci_high"]
    assert run["sample_count"] == len(docs) and run["model_version"] == lifecycle["v1"]


def test_per_sample_records_are_stored(gw, lifecycle):
    run = run_eval(gw, lifecycle["alias"], "perplexity", dataset="heldout.txt", limit=2)
    assert run["status"] == "succeeded"
    assert run["model"] == lifecycle["alias"] and run["model_version"] == lifecycle["v1"]
    full = gw.get(f"/v1/evals/{run['id']}", params={"include_samples": True}).json()
    assert [s["doc"] for s in full["samples"]] == [0, 1]
    assert all(s["tokens"] > 0 and s["nll"] > 0 for s in full["samples"])
