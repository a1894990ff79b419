"""Multiple choice by loglikelihood with planted answers, through the live service.

The answers are planted with an independent scorer: transformers ranks each
item's choices by the summed logprob of ``" " + choice`` after the context
(the suite's documented rule), and the file marks the best one as the answer
(``best.jsonl``) or the worst one (``worst.jsonl``). The service must then
score exactly 1.0 and 0.0: every item counts, so a bug in tokenising the
boundary, slicing the continuation, or aggregating would show.
"""

from __future__ import annotations

import json
import random

from transformers import AutoTokenizer

from . import models as m
from .conftest import run_eval

WORDS = "red green blue cat dog sun moon tree river stone bird fish lamp door road hill".split()


def _plant(eval_models, eval_data, n_items: int = 6) -> None:
    tok = AutoTokenizer.from_pretrained(eval_models["v1"])
    rng = random.Random(3)
    best, worst = [], []
    for _ in range(n_items):
        question = f"Which word comes next after {' '.join(rng.sample(WORDS, 3))}?"
        choices = rng.sample(WORDS, 4)
        context = f"Question: {question}\nAnswer:"
        scores = []
        for c in choices:
            ids = tok(context + " " + c, add_special_tokens=False).input_ids
            n_cont = len(ids) - len(tok(context, add_special_tokens=False).input_ids)
            scores.append(sum(m.reference_logprobs(eval_models["v1"], [tok.bos_token_id, *ids])[-n_cont:]))
        best.append({"question": question, "choices": choices, "answer": max(range(4), key=scores.__getitem__)})
        worst.append({"question": question, "choices": choices, "answer": min(range(4), key=scores.__getitem__)})
    (eval_data / "best.jsonl").write_text("".join(json.dumps(r) + "\n" for r in best))
    (eval_data / "worst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in worst))


def test_planted_answers_score_as_planted(gw, lifecycle, eval_models, eval_data):
    _plant(eval_models, eval_data)
    best = run_eval(gw, lifecycle["v1"], "multiple_choice", dataset="best.jsonl")
    worst = run_eval(gw, lifecycle["v1"], "multiple_choice", dataset="worst.jsonl")
    assert best["status"] == worst["status"] == "succeeded", (best["error"], worst["error"])
    assert best["metrics"]["acc"]["value"] == 1.0 and worst["metrics"]["acc"]["value"] == 0.0
    assert best["sample_count"] == 6
    records = gw.get(f"/v1/evals/{best['id']}", params={"include_samples": True}).json()["samples"]
    assert all(r["pred"] == r["gold"] and len(r["loglikelihoods"]) == 4 for r in records)


def test_arc_format_file_runs(gw, lifecycle):
    run = run_eval(gw, lifecycle["v1"], "multiple_choice", dataset="arc_sample.jsonl")
    assert run["status"] == "succeeded"
    acc = run["metrics"]["acc"]
    assert 0.0 <= acc["ci_low"] <= acc["value"] <= acc["ci_high"] <= 1.0
