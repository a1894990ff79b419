"""README's "## Evaluate and promote" lines, each run as written by the installed ``llmsvc`` console script, in
the README's order, against the eval tests' stack (gateway, auth, router with spare worker slots, eval
service, vLLM workers, PostgreSQL).

The README's names are registered as a first ``llmsvc up`` and the README's fine-tune leave them:
``tiny-chat-v1`` with the alias ``tiny-chat``, and ``adder-v1``. Their folders are stand-ins (building the
real tiny-chat takes minutes): tiny-chat-v1 is the slightly noisy copy of the random tiny model, adder-v1 the
model the gate's text was sampled from, so adder-v1 is measurably better and the gated promotion passes.
Neither is served when the lines start: each line's versions are started on demand. The CLI finds the gateway
and key where the README says it looks: ``$LLMSVC_BASE_URL`` and ``$LLMSVC_API_KEY``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.common.pb import router_pb2
from tests.readme import block

EVAL = block("## Evaluate and promote", "sh")


async def _register(url: str, tiny: Path, adder: Path) -> tuple[str, str]:
    from services.common.db import registry
    from services.common.db.engine import make_engine, session_factory

    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            first = (await registry.register_version(s, "tiny-chat", str(tiny), recipe="tiny-chat")).id
            await registry.set_alias(s, "tiny-chat", first, actor="test", action="create")
            tuned = (await registry.register_version(s, "adder", str(adder), recipe="sft",
                                                     parent=first)).id
            return first, tuned
    finally:
        await engine.dispose()


async def _alias(url: str, alias: str, delete: bool = False) -> str | None:
    from services.common.db.engine import make_engine, session_factory
    from services.common.db.registry import ModelAlias

    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            row = await s.get(ModelAlias, alias)
            if row is not None and delete:
                await s.delete(row)
                await s.commit()
            return row.version_id if row else None
    finally:
        await engine.dispose()


def test_the_readme_eval_and_promote_lines_run_as_written(eval_stack, eval_models, eval_pg_url, api_key, tmp_path):
    tiny, adder = tmp_path / "tiny-chat", tmp_path / "adder"
    shutil.copytree(eval_models["v1"], tiny)
    shutil.copytree(eval_models["v3"], adder)
    assert asyncio.run(_register(eval_pg_url, tiny, adder)) == ("tiny-chat-v1", "adder-v1")
    c = eval_stack.cfg
    gateway = f"http://{c.host}:{c.gateway_port}"
    env = {**os.environ, "LLMSVC_BASE_URL": gateway, "LLMSVC_API_KEY": api_key, "COLUMNS": "200"}
    exe = Path(sys.executable).parent / "llmsvc"
    lines = EVAL.commands()
    assert [w[:3] for w in lines] == [["llmsvc", "eval", "run"], ["llmsvc", "eval", "run"],
                                      ["llmsvc", "eval", "compare"], ["llmsvc", "models", "promote"]]
    out = []
    try:
        for words in lines:
            res = subprocess.run([exe, *words[1:]], capture_output=True, text=True, timeout=900, env=env)
            assert res.returncode == 0, f"README: `{' '.join(words)}` failed:\n{res.stdout}{res.stderr}"
            out.append(res.stdout)
        # Each run line ran its suite on its version and printed the metric.
        for text, version in ((out[0], "adder-v1"), (out[1], "tiny-chat-v1")):
            assert f"perplexity on {version}) " in text and "status=succeeded" in text and "perplexity" in text, text
        # compare: both versions side by side, a value on each side and the difference.
        row = next(line for line in out[2].splitlines() if "perplexity/perplexity" in line)
        assert "tiny-chat-v1" in out[2] and "adder-v1" in out[2] and row.count("±") == 2, out[2]
        assert "no succeeded runs" not in out[2]
        # promote: gated, passed, and the alias now reaches adder-v1.
        assert "adder-v1" in out[3] and "refused" not in out[3], out[3]
        assert asyncio.run(_alias(eval_pg_url, "tiny-chat")) == "adder-v1"
        reply = httpx.post(f"{gateway}/v1/chat/completions", timeout=300, headers={
            "Authorization": f"Bearer {api_key}"}, json={"model": "tiny-chat", "max_tokens": 2, "messages": [
                {"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.json()["model"] == "adder-v1", reply.text
    finally:  # stop what this test started: the tests that follow expect the stack's one version served
        asyncio.run(_alias(eval_pg_url, "tiny-chat", delete=True))
        time.sleep(3)  # the router sees a registry change within LLMSVC_ROUTER_ADAPTER_CACHE_TTL_S (2 s)
        deadline, why = time.monotonic() + 180, {}
        while _served(eval_stack) & {"tiny-chat-v1", "adder-v1"} and time.monotonic() < deadline:
            for version in ("tiny-chat-v1", "adder-v1"):
                why[version] = eval_stack.router_call(
                    "ReleaseVersion", router_pb2.ReleaseVersionRequest(version=version)).reason
            time.sleep(2)
        assert not _served(eval_stack) & {"tiny-chat-v1", "adder-v1"}, why


def _served(stack) -> set[str]:
    """Versions the router routes to (a stopped version's worker may still be draining: it is not)."""
    resp = stack.router_call("ListWorkers", router_pb2.ListWorkersRequest())
    return {w.load.models[0] for w in resp.workers if w.healthy and w.load.models and not w.load.draining}
