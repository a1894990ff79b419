"""lm-evaluation-harness against the live gateway: local-completions, remote tokenizer, a local-file task."""

from __future__ import annotations

from .conftest import run_eval


def test_lm_eval_runs_a_local_task_and_writes_results(gw, lifecycle):
    run = run_eval(gw, lifecycle["v1"], "lm_eval", dataset="arc_sample.jsonl", limit=4)
    assert run["status"] == "succeeded", run["error"]
    acc = run["metrics"]["llmsvc_mc/acc"]
    assert 0.0 <= acc["value"] <= 1.0 and acc["stderr"] >= 0.0
    samples = gw.get(f"/v1/evals/{run['id']}", params={"include_samples": True}).json()["samples"]
    assert len(samples) == 4 and all(s["task"] == "llmsvc_mc" and "acc" in s for s in samples)
