"""torchrun on CPU (gloo): two processes train the same model as one on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jobutil import final_status, losses, pretrain_spec, read_events, run_inprocess, start_job, stop

TOLERANCE = 1e-4
"""Absolute loss difference allowed per step (losses are ~6 at the start). Two processes sum their
gradients in a different order than one process does, so the runs agree to float32 rounding, ~1e-6,
not bit for bit; 1e-4 leaves room for that to grow through a few Adam steps."""


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_reach_the_same_loss_as_one(tmp_path, text_corpus, parallel):
    hp = {"steps": 5, "batch_size": 8, "parallel": parallel}
    code, one = run_inprocess(tmp_path / "one", pretrain_spec(tmp_path / "one", text_corpus, **hp))
    assert code == 0
    spec = pretrain_spec(tmp_path / "two", text_corpus, **hp)
    proc, events_path = start_job(tmp_path / "two", spec, nproc=2)
    try:
        code = proc.wait(600)
        stderr = proc.stderr.read()
    finally:
        stop(proc)
    two = read_events(events_path)
    assert code == 0, stderr[-3000:]
    assert final_status(two)["status"] == "succeeded"
    assert any("2 process(es)" in e.get("message", "") for e in two)
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys() == set(range(1, 6))
    diff = max(abs(a[s] - b[s]) for s in a)
    print(f"{parallel}: max |loss(2 processes) - loss(1 process)| over {len(a)} steps = {diff:.2e}")
    assert diff <= TOLERANCE, (a, b)
    # Only rank 0 reports: one status "running" and one "succeeded", one metrics event a step.
    assert [e["status"] for e in two if e["type"] == "status"] == ["running", "succeeded"]
    meta = json.loads((Path(spec["output_dir"]) / "llmsvc.json").read_text())
    assert meta["metrics"]["tokens"] == 5 * 8 * 64
