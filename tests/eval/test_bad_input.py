"""Bad input gets a clear status, and nothing partial is stored as a result."""

from __future__ import annotations

import time

import grpc

from services.common.pb import inference_pb2 as ipb
from services.common.pb import inference_pb2_grpc, router_pb2, router_pb2_grpc

from .conftest import run_eval


def test_unknown_suite_is_a_400_and_stores_nothing(gw, lifecycle):
    before = len(gw.get("/v1/evals", params={"model": lifecycle["v1"]}).json()["data"])
    r = gw.post("/v1/evals", json={"model": lifecycle["v1"], "suite": "mmlu-pro-max"})
    assert r.status_code == 400 and "unknown suite 'mmlu-pro-max'" in r.json()["error"]["message"]
    assert "perplexity" in r.json()["error"]["message"]  # names the known ones
    assert len(gw.get("/v1/evals", params={"model": lifecycle["v1"]}).json()["data"]) == before


def test_bad_params_and_missing_dataset_are_400s(gw, lifecycle):
    r = gw.post("/v1/evals", json={"model": lifecycle["v1"], "suite": "perplexity", "params": {"windw": 8}})
    assert r.status_code == 400 and "windw" in r.json()["error"]["message"]
    r = gw.post("/v1/evals", json={"model": lifecycle["v1"], "suite": "perplexity",
                                   "params": {"dataset": "../../etc/passwd"}})
    assert r.status_code == 400 and "was not found" in r.json()["error"]["message"]


def test_unknown_model_version_is_a_404(gw):
    r = gw.post("/v1/evals", json={"model": "no-such-model-v9", "suite": "perplexity"})
    assert r.status_code == 404 and "no-such-model-v9" in r.json()["error"]["message"]
    assert gw.get("/v1/evals/eval-doesnotexist").status_code == 404


def test_cancel_mid_run_leaves_cancelled_without_metrics(gw, lifecycle):
    r = gw.post("/v1/evals", json={"model": lifecycle["v1"], "suite": "perplexity",
                                   "params": {"dataset": "heldout.txt", "window": 8, "stride": 1}})
    run_id = r.json()["id"]
    while (run := gw.get(f"/v1/evals/{run_id}").json())["samples_done"] == 0:
        assert run["status"] in ("queued", "running"), run
        time.sleep(0.2)
    cancelled = gw.post(f"/v1/evals/{run_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["metrics"] == {}
    stored = gw.get(f"/v1/evals/{run_id}", params={"include_samples": True}).json()
    assert stored["status"] == "cancelled" and stored["metrics"] == {} and stored["samples"] == []
    assert 0 < stored["samples_done"] < stored["sample_count"]
    assert gw.post(f"/v1/evals/{run_id}/cancel").status_code == 409  # already final


def _drain(eval_stack, version: str) -> None:
    """Stop the worker the service launched for ``version`` (frees its slot and memory for later tests)."""
    import asyncio

    async def drain():
        router = eval_stack.channel(eval_stack.cfg.router_port)
        workers = (await router_pb2_grpc.RouterStub(router).ListWorkers(router_pb2.ListWorkersRequest())).workers
        await router.close()
        for w in workers:
            if w.healthy and w.load.models and w.load.models[0] == version:
                ch = eval_stack.channel(w.address)
                try:
                    await inference_pb2_grpc.InferenceStub(ch).Drain(ipb.DrainRequest(), timeout=10)
                except grpc.aio.AioRpcError:
                    pass
                await ch.close()

    asyncio.run(drain())


def test_a_model_that_emits_garbage_fails_clearly(gw, eval_stack, lifecycle):
    """All-NaN weights: the service starts a worker for the version, sees non-finite logprobs, fails the run."""
    run = run_eval(gw, lifecycle["garbage"], "perplexity", dataset="heldout.txt", limit=1)
    try:
        assert run["status"] == "failed", run
        assert "invalid logprob" in run["error"] or "not finite" in run["error"], run["error"]
        assert run["metrics"] == {}
        assert gw.get(f"/v1/evals/{run['id']}", params={"include_samples": True}).json()["samples"] == []
    finally:
        _drain(eval_stack, lifecycle["garbage"])
