"""Eval after training: a job may name eval suites (the ``evals`` extension); when it succeeds, the trainer has the
eval service run each one against the new version, and follows them.

``evals`` is a list of suite names or ``{"suite", "params"}`` objects, checked when the job is created (an
unknown suite or a malformed entry is a 400 naming ``evals``). The runs are created for the job's owner (a
signed identity, as the gateway sends), so they are the owner's, count against the owner's limit on active
runs, and are listed under ``/v1/evals``. The job keeps their state in ``extra["eval_runs"]``; the supervisor
polls the ones not yet final on each tick (a restarted trainer picks them up again) and, when one ends,
writes an event and the run's metrics into the job's ``metrics`` (``{suite: {metric: value}}``). The
promotion gate reuses a stored run of the same suite and params for the same version instead of running
it again (:mod:`services.lifecycle.promotion`).
"""

from __future__ import annotations

import json
import logging

import grpc

from services.common.grpcutil import insecure_channel
from services.common.identity import Identity, IdentityCodec
from services.common.pb import eval_pb2, eval_pb2_grpc

from .spec import SpecError

log = logging.getLogger(__name__)

MAX_EVALS = 8
FINAL = {"succeeded", "failed", "cancelled"}


def check_evals(value) -> list[dict]:
    """``evals`` as ``[{"suite", "params"}]``, or SpecError naming it."""
    from services.eval.suites import SUITES

    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EVALS:
        raise SpecError(f"evals must be a list of 1 to {MAX_EVALS} suite names or {{\"suite\", \"params\"}} "
                        "objects.", "evals")
    out = []
    for i, item in enumerate(value):
        entry = {"suite": item, "params": {}} if isinstance(item, str) else item
        if not isinstance(entry, dict) or set(entry) - {"suite", "params"} or not isinstance(entry.get("suite"), str) \
                or not isinstance(entry.get("params", {}), dict):
            raise SpecError(f"evals[{i}] must be a suite name or {{\"suite\": name, \"params\": {{...}}}}.",
                            f"evals[{i}]")
        if entry["suite"] not in SUITES:
            raise SpecError(f"evals[{i}]: unknown suite '{entry['suite']}'; known suites: "
                            f"{', '.join(sorted(SUITES))}.", f"evals[{i}]")
        out.append({"suite": entry["suite"], "params": entry.get("params") or {}})
    return out


def summary(metrics: dict) -> str:
    return ", ".join(f"{k}={v['value']:.4g}" for k, v in sorted(metrics.items())
                     if isinstance(v, dict) and isinstance(v.get("value"), (int, float)))


class EvalLauncher:
    """Creates and reads eval runs on the eval service for jobs (``LLMSVC_TRAINER_EVAL_ADDR``)."""

    def __init__(self, eval_addr: str) -> None:
        self.channel = insecure_channel(eval_addr)
        self.stub = eval_pb2_grpc.EvalStub(self.channel)
        self.identity = IdentityCodec()

    def _md(self, owner: str, job_id: str):
        return self.identity.metadata(Identity(owner=owner, key_id=f"job:{job_id}", admin=False))

    async def start(self, job_id: str, owner: str, version: str, evals: list[dict]) -> tuple[list[dict], list[str]]:
        """Create the runs: (``eval_runs`` entries, event messages)."""
        runs, notes = [], []
        for e in evals:
            try:
                run = await self.stub.CreateRun(eval_pb2.CreateRunRequest(
                    model=version, suite=e["suite"], params_json=json.dumps(e["params"]), created_by=f"job:{job_id}"),
                    timeout=30.0, metadata=self._md(owner, job_id))
            except grpc.aio.AioRpcError as exc:
                runs.append({**e, "run_id": "", "status": "failed", "error": exc.details() or exc.code().name})
                notes.append(f"Eval {e['suite']} could not start: {exc.details() or exc.code().name}")
                continue
            runs.append({**e, "run_id": run.id, "status": "queued"})
            notes.append(f"Eval {e['suite']} started on {version}: {run.id}")
        return runs, notes

    async def status(self, owner: str, job_id: str, run_id: str) -> tuple[str, dict, str]:
        """(status, {metric: {value, stderr, …}}, error) of a run."""
        run = await self.stub.GetRun(eval_pb2.GetRunRequest(id=run_id), timeout=10.0,
                                     metadata=self._md(owner, job_id))
        status = eval_pb2.EvalStatus.Name(run.status).removeprefix("EVAL_STATUS_").lower()
        metrics = {k: {"value": m.value, "stderr": m.stderr} for k, m in run.metrics.items()}
        return status, metrics, run.error

    async def close(self) -> None:
        await self.channel.close()
