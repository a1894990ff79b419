"""One stack for the eval tests: gateway, auth, router, eval service and a vLLM worker, on PostgreSQL.

It differs from the shared ``stack`` fixture in what promotion needs: the worker
serves a *registered* version under its id with an alias, and the router polls
two spare addresses where the eval service may start workers for other
versions. Versions are registered under a per-session name so that runs never
collide with other tests' rows in the same database.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from services.cli.stack import Stack, StackConfig, free_port

from . import models as m

FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-data")


@pytest.fixture(scope="session")
def eval_models(default_model, tmp_path_factory, eval_data) -> dict[str, Path]:
    """v1: a little noise (the alias's first version); v2: much more (worse); v3: none (better); garbage: NaN."""
    root = tmp_path_factory.mktemp("eval-models")
    out = {"v1": m.perturbed(default_model, root / "v1", sigma=0.3, seed=1),
           "v2": m.perturbed(default_model, root / "v2", sigma=1.5, seed=2),
           "garbage": m.nan_model(default_model, root / "garbage")}
    shutil.copytree(default_model, root / "v3")
    out["v3"] = root / "v3"
    docs = m.sample_text(default_model, n_docs=4, tokens=120, seed=7)
    (eval_data / "sampled.txt").write_text("\n\n".join(docs) + "\n")
    return out


async def _register(url: str, name: str, paths: list[Path], alias: str) -> list[str]:
    from services.common.db import registry
    from services.common.db.engine import make_engine, session_factory

    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            ids = [(await registry.register_version(s, name, str(p), recipe="test")).id for p in paths]
            garbage = await registry.register_version(s, name + "-garbage", str(paths[-1].parent / "garbage"))
            await registry.set_alias(s, alias, ids[0], actor="test", action="create")
        return [*ids, garbage.id]
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def eval_pg_url(pg_database) -> str:
    """The eval tests' own PostgreSQL database (their stack runs an eval and a trainer service on it)."""
    return pg_database()


@pytest.fixture(scope="session")
def lifecycle(eval_models, eval_pg_url) -> dict:
    """Registry rows: ``{"alias", "v1", "v2", "v3", "garbage"}`` → ids."""
    from services.common.db.migrate import upgrade

    upgrade(eval_pg_url)
    name, alias = f"tc{uuid.uuid4().hex[:6]}", f"chat{uuid.uuid4().hex[:6]}"
    ids = asyncio.run(_register(eval_pg_url, name, [eval_models[k] for k in ("v1", "v2", "v3")], alias))
    return {"alias": alias, "v1": ids[0], "v2": ids[1], "v3": ids[2], "garbage": ids[3], "name": name}


GATE_DATASET = "sampled.txt"


@pytest.fixture(scope="session")
def eval_stack(tmp_path_factory, eval_models, lifecycle, eval_pg_url, api_key, eval_data):
    gate = [{"suite": "perplexity", "metric": "perplexity", "params": {"dataset": GATE_DATASET},
             "threshold": 1e6, "tolerance": 0.02}]
    cfg = StackConfig.ephemeral(
        tmp_path_factory.mktemp("eval-stack"), eval_models["v1"], api_key, served_model_name=lifecycle["v1"],
        model_aliases=[lifecycle["alias"]], database_url=eval_pg_url,
        # A slot per version besides v1's (garbage, v2, v3): no test depends on a drained worker's port
        # being free again (another test's stack may have taken it by then).
        spare_worker_ports=[free_port(), free_port(), free_port()],
        extra_env={"LLMSVC_EVAL_DATA_DIRS": json.dumps([str(eval_data)]), "LLMSVC_EVAL_GATE": json.dumps(gate),
                   "LLMSVC_EVAL_MAX_ACTIVE_RUNS_PER_OWNER": "1",
                   "LLMSVC_WORKER_DTYPE": "float32", "LLMSVC_WORKER_GRACE_S": "60"})
    with Stack(cfg).running(stop_timeout_s=60) as s:
        yield s


@pytest.fixture(scope="session")
def gw(eval_stack, api_key):
    c = eval_stack.cfg
    with httpx.Client(base_url=f"http://{c.host}:{c.gateway_port}", headers={"Authorization": f"Bearer {api_key}"},
                      timeout=900) as client:
        yield client


def wait_run(gw: httpx.Client, run_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = gw.get(f"/v1/evals/{run_id}").json()
        if run["status"] in FINAL:
            return run
        time.sleep(0.5)
    raise TimeoutError(f"eval run {run_id} did not finish")


def run_eval(gw: httpx.Client, model: str, suite: str, **params) -> dict:
    resp = gw.post("/v1/evals", json={"model": model, "suite": suite, "params": params})
    assert resp.status_code == 200, resp.text
    return wait_run(gw, resp.json()["id"])


def pytest_collection_modifyitems(items):
    """Promotion drains the alias's old workers: run those tests after every test that uses v1's worker."""
    items.sort(key=lambda item: "tests/eval/test_promotion.py" in item.nodeid)
