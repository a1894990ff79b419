"""Whole jobs through the real entry point: outputs, events, metrics, resume, cancellation, bad input."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from jobutil import final_status, losses, pretrain_spec, read_events, run_inprocess, start_job, stop

from services.cli.stack import free_port


def _no_model_left(spec: dict) -> None:
    out = Path(spec["output_dir"])
    assert not out.exists(), f"{out} exists after a failed job"
    assert not out.with_name(out.name + ".tmp").exists()


def _wait_for(events_path: Path, predicate, proc, timeout: float = 240.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_events(events_path)
        if any(predicate(e) for e in events):
            return events
        if proc.poll() is not None:
            raise AssertionError(f"job exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no matching event in {events_path}")


def test_pretrain_job_publishes_a_hf_directory_that_transformers_loads(tmp_path, text_corpus):
    spec = pretrain_spec(tmp_path, text_corpus, steps=8)
    code, events = run_inprocess(tmp_path, spec)
    assert code == 0, events
    assert events[0]["type"] == "status" and events[0]["status"] == "running"
    assert final_status(events)["status"] == "succeeded"
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "ts"} <= set(metrics[0])
    assert metrics[-1]["loss"] < metrics[0]["loss"]

    out = Path(spec["output_dir"])
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json", "llmsvc.json"} <= names
    meta = json.loads((out / "llmsvc.json").read_text())
    assert meta["name"] == "out" and meta["recipe"] == "pretrain" and meta["parent"] is None
    assert meta["config"]["hyperparameters"]["steps"] == 8 and len(meta["data_hash"]) == 64
    assert meta["metrics"]["steps"] == 8 and meta["metrics"]["tokens"] == 8 * 4 * 64
    assert meta["metrics"]["final_loss"] == pytest.approx(metrics[-1]["loss"], rel=1e-4)
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "red cat"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_grad_accumulation_gives_the_same_steps_as_one_big_batch(tmp_path, text_corpus):
    """Same global batch, split into 4 micro-batches or not: the loss curves agree to float rounding."""
    _, one = run_inprocess(tmp_path / "a", pretrain_spec(tmp_path / "a", text_corpus, steps=4))
    _, acc = run_inprocess(tmp_path / "b", pretrain_spec(tmp_path / "b", text_corpus, steps=4, grad_accum=4))
    a, b = losses(one), losses(acc)
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5)


@pytest.mark.slow
def test_killed_job_resumes_with_the_same_loss_curve(tmp_path, text_corpus):
    """SIGKILL after the first checkpoint, resume: every step's loss equals the uninterrupted run's."""
    ref_spec = pretrain_spec(tmp_path / "ref", text_corpus, steps=10)
    code, ref = run_inprocess(tmp_path / "ref", ref_spec)
    assert code == 0
    spec = {**pretrain_spec(tmp_path / "run", text_corpus, steps=10), "checkpoint_every": 3, "keep_checkpoints": 2}
    proc, events_path = start_job(tmp_path / "run", spec)
    try:
        _wait_for(events_path, lambda e: e["type"] == "checkpoint", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop(proc)
    first = read_events(events_path)
    ckpt_step = max(e["step"] for e in first if e["type"] == "checkpoint")
    assert ckpt_step < 10 and not Path(spec["output_dir"]).exists()

    code, second = run_inprocess(tmp_path / "run", spec)
    assert code == 0, second
    assert any(e.get("message") == f"resumed from the checkpoint at step {ckpt_step}" for e in second)
    resumed = losses(second)
    assert min(resumed) == ckpt_step + 1
    curve = {**{s: v for s, v in losses(first).items() if s <= ckpt_step}, **resumed}
    reference = losses(ref)
    assert curve.keys() == reference.keys()
    for step, value in reference.items():
        assert curve[step] == pytest.approx(value, abs=1e-6), step
    meta = json.loads((Path(spec["output_dir"]) / "llmsvc.json").read_text())
    assert meta["metrics"]["steps"] == 10
    kept = sorted(p.name for p in Path(spec["checkpoint_dir"]).glob("step_*"))
    assert len(kept) <= 2 and not list(Path(spec["checkpoint_dir"]).glob(".step_*"))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_reports_cancelled_and_exports_metrics(tmp_path, text_corpus, monkeypatch):
    spec = {**pretrain_spec(tmp_path, text_corpus, steps=100_000), "checkpoint_every": 0}
    port = free_port()
    monkeypatch.setenv("LLMSVC_TRAINER_METRICS_PORT", str(port))
    monkeypatch.setenv("LLMSVC_JOB_ID", "job-42")
    proc, events_path = start_job(tmp_path, spec)
    try:
        _wait_for(events_path, lambda e: e["type"] == "metrics" and e["step"] >= 2, proc)
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for gauge in ("loss", "step", "tokens_per_second", "grad_norm", "learning_rate"):
            assert f'llmsvc_train_{gauge}{{job_id="job-42"}}' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 143
    finally:
        stop(proc)
    events = read_events(events_path)
    status = final_status(events)
    assert status["status"] == "cancelled" and "checkpoint" in status["message"]
    ckpt = [e for e in events if e["type"] == "checkpoint"]
    assert len(ckpt) == 1 and (Path(ckpt[0]["path"]) / "state.pt").exists()
    _no_model_left(spec)


def _corrupt(tmp: Path) -> str:
    p = tmp / "corrupt.jsonl"
    p.write_text('{"text": "a fine first document here"}\n{"text": "unterminated\n')
    return str(p)


def _empty(tmp: Path) -> str:
    p = tmp / "empty.txt"
    p.write_text("\n\n")
    return str(p)


@pytest.mark.parametrize("case, mutate, message", [
    ("missing dataset", lambda s, t: s["data"].update(train=str(t / "nope.jsonl")), "nope.jsonl does not exist"),
    ("corrupt dataset", lambda s, t: s["data"].update(train=_corrupt(t)), "corrupt.jsonl:2: invalid JSON"),
    ("empty corpus", lambda s, t: s["data"].update(train=_empty(t)), "no usable text records"),
    ("model too large", lambda s, t: s["model"].update(preset="8b"), "needs about"),
    ("unknown recipe", lambda s, t: s.update(recipe="rlhf"), "recipe: Input should be"),
    ("unknown preset", lambda s, t: s["model"].update(preset="huge"), "unknown model preset 'huge'"),
])
def test_bad_input_fails_clearly_and_leaves_no_model(tmp_path, text_corpus, case, mutate, message):
    spec = pretrain_spec(tmp_path, text_corpus)
    mutate(spec, tmp_path)
    code, events = run_inprocess(tmp_path, spec)
    assert code == 1
    status = final_status(events)
    assert status["status"] == "failed" and message in status["message"], status
    _no_model_left(spec)
