"""Exact-match generation suites on the live stack: repeatable at temperature 0, per-task metrics, CLI."""

from __future__ import annotations

from services.cli.main import main as cli

from .conftest import run_eval


def _outputs(gw, run_id):
    return [s["output"] for s in gw.get(f"/v1/evals/{run_id}", params={"include_samples": True}).json()["samples"]]


def test_tiny_chat_is_deterministic_and_reports_each_task(gw, lifecycle):
    a = run_eval(gw, lifecycle["v1"], "tiny_chat", limit=12, max_tokens=8)
    b = run_eval(gw, lifecycle["v1"], "tiny_chat", limit=12, max_tokens=8)
    assert a["status"] == b["status"] == "succeeded", (a["error"], b["error"])
    assert _outputs(gw, a["id"]) == _outputs(gw, b["id"])
    assert {"exact_match", "exact_match/arithmetic", "exact_match/reversal"} <= set(a["metrics"])
    # A random model answers none of these: the suite must say so, not crash.
    assert a["metrics"]["exact_match"]["value"] == 0.0


def test_gsm8k_extracts_answers(gw, lifecycle):
    run = run_eval(gw, lifecycle["v1"], "gsm8k", limit=2, max_tokens=16, num_fewshot=1)
    assert run["status"] == "succeeded", run["error"]
    samples = gw.get(f"/v1/evals/{run['id']}", params={"include_samples": True}).json()["samples"]
    assert [s["target"] for s in samples] == ["8", "48"]
    assert set(run["metrics"]) == {"exact_match", "exact_match_strict"}


def test_cli_show_and_compare(gw, eval_stack, lifecycle, api_key, capsys):
    c = eval_stack.cfg
    base = ["--base-url", f"http://{c.host}:{c.gateway_port}", "--api-key", api_key]
    run = run_eval(gw, lifecycle["v1"], "perplexity", dataset="heldout.txt", limit=1)
    assert cli(["eval", "show", run["id"], *base]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert cli(["eval", "compare", lifecycle["v1"], lifecycle["v3"], "--suite", "perplexity", *base]) == 0
    out = capsys.readouterr().out
    assert "perplexity/perplexity" in out and lifecycle["v1"] in out
