"""The Batch API (``/v1/batches``) through the official ``openai`` client, on the real stack.

A batch's lines run through the gateway, at batch priority, as the key that made the batch: the trainer's
batch runner sends them (``services/trainer/batches/runner.py``). These tests hold what a user sees: one
output line per ``custom_id``, a bad body as that line's 400 in the error file while the other lines run,
progress counts, usage charged to the key, cancel and expiry (every line still ends exactly once, in the
output or the error file), a malformed file as a ``failed`` batch whose errors name the lines, and each bad
request as a 400 or 404 naming its field. Another owner's batch is a 404. The trainer is killed with SIGKILL
halfway through a batch and started again: every line ends exactly once, and the usage records show exactly
one finished request per line (the killed runner's requests in flight were aborted by the gateway; the
answers it had made were recorded by the gateway, not made again).

The module restarts the session stack's trainer with a smaller batch file limit (1 MiB), line limit (40) and
supervisor lease (3 s), so those limits and the takeover after a crash are quick to reach; it puts the
trainer back as it was at the end. The session's model is the random tiny Llama: what it says means nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time

import httpx
import openai
import pytest

MAX_LINES = 40
TEST_TRAINER_ENV = {"LLMSVC_TRAINER_MAX_BATCH_FILE_MIB": "1", "LLMSVC_TRAINER_MAX_BATCH_LINES": str(MAX_LINES),
                    "LLMSVC_TRAINER_LEASE_TTL_S": "3"}


def _start_trainer(stack, extra: dict[str, str]) -> None:
    stack.stop_proc("trainer")
    stack.spawn("trainer", "services.trainer.main", stack.env_for("trainer") | extra)
    stack.wait_for("/batches", timeout_s=120)


@pytest.fixture(scope="module", autouse=True)
def batch_trainer(stack):
    _start_trainer(stack, TEST_TRAINER_ENV)
    yield stack
    _start_trainer(stack, {})


@pytest.fixture(scope="module")
def admin(base_url, api_key):
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def _key(admin, name: str, owner: str, scopes=("chat", "train")) -> dict:
    r = admin.post("/admin/keys", json={"name": name, "owner": owner, "scopes": list(scopes), "rpm": 100_000,
                                        "tpm": 10_000_000})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def team(admin, base_url):
    """A key of its own owner, so its usage is this module's alone."""
    key = _key(admin, "batch-team", "team-batch")
    return key, openai.OpenAI(base_url=base_url, api_key=key["key"], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def other(admin, base_url):
    key = _key(admin, "batch-other", "team-other")
    return openai.OpenAI(base_url=base_url, api_key=key["key"], max_retries=0, timeout=120)


def _line(custom_id: str, body: dict, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _chat_body(model: str, text: str, max_tokens: int = 8) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0}


def _upload(client, lines: list, raw: bytes | None = None):
    data = raw if raw is not None else b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    return client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")


def _wait(client, batch_id: str, until=("completed", "failed", "expired", "cancelled"), timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in until:
            return b
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} still {b.status} after {timeout_s}s: {b.request_counts}")


def _results(client, file_id: str | None) -> list[dict]:
    if not file_id:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x.strip()]


def _every_line_once(client, batch, custom_ids: list[str]) -> tuple[list[dict], list[dict]]:
    out, err = _results(client, batch.output_file_id), _results(client, batch.error_file_id)
    seen = [r["custom_id"] for r in out + err]
    assert sorted(seen) == sorted(custom_ids), "every line ends exactly once, in the output or the error file"
    assert batch.request_counts.total == len(custom_ids)
    assert batch.request_counts.completed == len(out) and batch.request_counts.failed == len(err)
    return out, err


def test_a_batch_of_chat_lines_gives_one_output_line_per_custom_id(team, model_name, admin):
    key, client = team
    ids = [f"q-{i}" for i in range(8)]
    f = _upload(client, [_line(c, _chat_body(model_name, f"Tell me about {c}")) for c in ids])
    assert f.purpose == "batch" and f.status == "processed"
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "nightly"})
    assert b.id.startswith("batch_") and b.object == "batch" and b.status == "in_progress"
    assert b.metadata == {"job": "nightly"} and b.expires_at - b.created_at == 24 * 3600 and b.model == model_name
    b = _wait(client, b.id)
    assert b.status == "completed" and b.completed_at and b.finalizing_at and b.error_file_id is None
    out, _ = _every_line_once(client, b, ids)
    assert [r["custom_id"] for r in out] == ids  # in the input file's order
    for r in out:
        assert r["id"].startswith("batch_req_") and r["error"] is None
        assert r["response"]["status_code"] == 200 and r["response"]["request_id"] == r["id"]
        body = r["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == model_name
        assert body["usage"]["completion_tokens"] == 8  # max_tokens, honoured per line
    assert b.usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in out)
    assert b.usage.output_tokens == 8 * len(ids) and b.usage.total_tokens == b.usage.input_tokens + 64
    assert client.files.retrieve(b.output_file_id).purpose == "batch_output"
    # Charged to the key that made the batch (its first use), line by line, as its own requests would be.
    want = {"requests": len(ids), "prompt_tokens": b.usage.input_tokens, "completion_tokens": 64}
    deadline = time.monotonic() + 30
    while (total := admin.get(f"/admin/keys/{key['id']}/usage").json()["total"]) and \
            {k: total[k] for k in want} != want and time.monotonic() < deadline:
        time.sleep(0.5)  # usage reports are sent in the background, batched
    assert {k: total[k] for k in want} == want


def test_a_bad_body_is_that_lines_400_and_the_other_lines_run(team, model_name):
    _, client = team
    lines = [_line("good-1", _chat_body(model_name, "hi")),
             _line("bad-temp", {**_chat_body(model_name, "hi"), "temperature": 7}),
             _line("no-model", _chat_body("no-such-model", "hi")),
             _line("good-2", _chat_body(model_name, "hello"))]
    b = _wait(client, client.batches.create(input_file_id=_upload(client, lines).id,
                                            endpoint="/v1/chat/completions", completion_window="24h").id)
    assert b.status == "completed"
    out, err = _every_line_once(client, b, [x["custom_id"] for x in lines])
    assert [r["custom_id"] for r in out] == ["good-1", "good-2"]
    by_id = {r["custom_id"]: r["response"] for r in err}
    assert by_id["bad-temp"]["status_code"] == 400 and by_id["bad-temp"]["body"]["error"]["param"] == "temperature"
    assert by_id["no-model"]["status_code"] == 404
    assert by_id["no-model"]["body"]["error"]["code"] == "model_not_found"


def test_completions_and_responses_lines(team, model_name):
    _, client = team
    comp = [_line(f"c{i}", {"model": model_name, "prompt": "Once upon", "max_tokens": 4}, "/v1/completions")
            for i in range(2)]
    resp = [_line(f"r{i}", {"model": model_name, "input": "Hello", "max_output_tokens": 4, "store": False},
                  "/v1/responses") for i in range(2)]
    for endpoint, lines, obj in (("/v1/completions", comp, "text_completion"), ("/v1/responses", resp, "response")):
        b = _wait(client, client.batches.create(input_file_id=_upload(client, lines).id, endpoint=endpoint,
                                                completion_window="24h").id)
        out, _ = _every_line_once(client, b, [x["custom_id"] for x in lines])
        assert [r["response"]["body"]["object"] for r in out] == [obj, obj], endpoint
        assert b.usage.output_tokens == 8, endpoint


def test_a_malformed_file_makes_a_failed_batch_whose_errors_name_the_lines(team, model_name):
    _, client = team
    good = _line("ok", _chat_body(model_name, "hi"))
    raw = b"\n".join([
        json.dumps(good).encode(),
        json.dumps({**good, "custom_id": "ok"}).encode(),                                  # 2: duplicate
        json.dumps({k: v for k, v in good.items() if k != "custom_id"}).encode(),          # 3: no custom_id
        json.dumps({**good, "custom_id": "m", "method": "GET"}).encode(),                  # 4: method
        json.dumps({**good, "custom_id": "u", "url": "/v1/embeddings"}).encode(),          # 5: url
        json.dumps({**good, "custom_id": "b", "body": "text"}).encode(),                   # 6: body
        json.dumps({**good, "custom_id": "n", "body": {"messages": []}}).encode(),         # 7: model
        json.dumps({**good, "custom_id": "s", "body": {**good["body"], "stream": True}}).encode(),  # 8: stream
    ]) + b"\n"
    f = _upload(client, [], raw)
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and b.failed_at and b.output_file_id is None
    got = [(e.line, e.code, e.param) for e in b.errors.data]
    assert got == [(2, "duplicate_custom_id", "custom_id"), (3, "invalid_custom_id", "custom_id"),
                   (4, "invalid_method", "method"), (5, "invalid_url", "url"), (6, "invalid_body", "body"),
                   (7, "missing_required_parameter", "body.model"), (8, "invalid_body", "body.stream")]
    assert all(e.message.startswith(f"Line {e.line}") for e in b.errors.data)


def test_a_file_that_is_not_json_lines_is_refused_at_upload(team):
    _, client = team
    with pytest.raises(openai.BadRequestError) as e:
        _upload(client, [], b'{"custom_id": "a"}\nnot json\n')
    assert "line 2" in e.value.message and e.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as e:
        _upload(client, [], b'{"custom_id": "a"}\n[1, 2]\n')
    assert "line 2" in e.value.message and "JSON object" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        _upload(client, [], b"\n\n")
    assert "empty" in e.value.message


def test_an_oversized_file_and_too_many_lines_are_clear_errors(team, model_name):
    _, client = team
    with pytest.raises(openai.BadRequestError) as e:  # the module's trainer holds batch files to 1 MiB
        _upload(client, [], (json.dumps(_line("x", _chat_body(model_name, "y" * 1000))).encode() + b"\n") * 1100)
    assert "larger than 1 MiB" in e.value.message and e.value.body["param"] == "file"
    lines = [_line(f"l{i}", _chat_body(model_name, "hi")) for i in range(MAX_LINES + 1)]
    b = client.batches.create(input_file_id=_upload(client, lines).id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert b.status == "failed"
    assert b.errors.data[0].code == "too_many_requests" and f"at most {MAX_LINES}" in b.errors.data[0].message


@pytest.mark.parametrize("change, status, param", [
    ({"endpoint": "/v1/images/generations"}, 400, "endpoint"),
    ({"completion_window": "48h"}, 400, "completion_window"),
    ({"completion_window": "soon"}, 400, "completion_window"),
    ({"input_file_id": "file-nope"}, 404, "input_file_id"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, 400, "output_expires_after"),
])
def test_bad_create_requests_name_their_field(team, model_name, change, status, param):
    _, client = team
    f = _upload(client, [_line("a", _chat_body(model_name, "hi"))])
    args = {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"} | change
    with pytest.raises(openai.APIStatusError) as e:
        client.batches.create(**args)
    assert e.value.status_code == status and e.value.body["param"] == param


def test_a_training_file_cannot_make_a_batch(team):
    _, client = team
    f = client.files.create(file=("train.jsonl", io.BytesIO(json.dumps({"text": "hello"}).encode() + b"\n")),
                            purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.body["param"] == "input_file_id" and "purpose 'batch'" in e.value.message


def test_another_owners_batch_and_file_are_404(team, other, model_name):
    _, client = team
    f = _upload(client, [_line("a", _chat_body(model_name, "hi"))])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(b.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.id not in [x.id for x in other.batches.list()]
    assert b.id in [x.id for x in client.batches.list(limit=100)]
    _wait(client, b.id)


def test_list_pages_newest_first(team, model_name):
    _, client = team
    f = _upload(client, [_line("a", _chat_body(model_name, "hi", 1))])
    made = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h").id for _ in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    nxt = client.batches.list(limit=2, after=page.data[-1].id)
    assert nxt.data[0].id == made[0]
    for batch_id in made:
        _wait(client, batch_id)


def test_cancel_stops_the_batch_and_every_line_ends_once(team, model_name):
    _, client = team
    ids = [f"c-{i}" for i in range(MAX_LINES)]
    f = _upload(client, [_line(c, _chat_body(model_name, "count", 256)) for c in ids])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    c = client.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled") and c.cancelling_at
    b = _wait(client, b.id, until=("cancelled",))
    out, err = _every_line_once(client, b, ids)
    assert b.cancelled_at and len(out) < len(ids)
    unrun = [r for r in err if r["response"] is None]
    assert unrun and all(r["error"]["code"] == "batch_cancelled" for r in unrun)
    assert client.batches.cancel(b.id).status == "cancelled"  # an ended batch stays as it is


def test_a_batch_past_its_window_expires_and_every_line_ends_once(team, model_name):
    _, client = team
    ids = [f"e-{i}" for i in range(MAX_LINES)]
    f = _upload(client, [_line(c, _chat_body(model_name, "count", 256)) for c in ids])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1s")
    assert b.expires_at - b.created_at == 1
    b = _wait(client, b.id)
    assert b.status == "expired" and b.expired_at
    _, err = _every_line_once(client, b, ids)
    assert any(r["error"] and r["error"]["code"] == "batch_expired" for r in err)


def test_a_forged_identity_is_refused(base_url, model_name):
    r = httpx.post(f"{base_url}/chat/completions", json=_chat_body(model_name, "hi"),
                   headers={"x-llmsvc-identity": "eyJvIjoieCJ9", "x-llmsvc-identity-sig": "00" * 32}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def _ok_requests(db_url: str, key_id: str) -> dict[str, list[str]]:
    from sqlalchemy import select

    from services.common.db.auth_tables import UsageRecord
    from services.common.db.engine import make_engine

    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(UsageRecord.request_id, UsageRecord.status)
                                       .where(UsageRecord.key_id == key_id))).all()
    finally:
        await engine.dispose()
    by_request: dict[str, list[str]] = {}
    for rid, status in rows:
        by_request.setdefault(rid, []).append(status)
    return by_request


def test_interactive_requests_are_answered_while_a_batch_runs(team, openai_client, model_name):
    """Interactive TTFT while a batch runs, against idle: measured and printed, not held to a threshold (these
    machines are noisy; ``bench/batches.py`` measures it properly). What must hold: every interactive request
    is answered while the batch is in progress, ahead of the batch's waiting lines."""
    _, client = team

    def ttft() -> float:
        t = time.perf_counter()
        stream = openai_client.chat.completions.create(model=model_name, stream=True, max_tokens=4,
                                                       messages=[{"role": "user", "content": "hi"}],
                                                       extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
                break
        stream.close()
        return time.perf_counter() - t

    idle = [ttft() for _ in range(8)]
    ids = [f"t-{i}" for i in range(MAX_LINES)]
    f = _upload(client, [_line(c, _chat_body(model_name, "count", 256)) for c in ids])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while client.batches.retrieve(b.id).request_counts.completed < 1:
        time.sleep(0.05)
    busy = [ttft() for _ in range(8)]
    during = client.batches.retrieve(b.id)
    assert during.status == "in_progress" and during.request_counts.completed < len(ids)
    print(f"\ninteractive TTFT p50: idle {sorted(idle)[4] * 1000:.0f} ms, during a batch "
          f"{sorted(busy)[4] * 1000:.0f} ms ({during.request_counts.completed}/{len(ids)} lines done after)")
    assert _wait(client, b.id).status == "completed"


def test_batches_running_together_share_the_runners_slots(batch_trainer, team, model_name):
    """Two batches at once: both complete, and the engine never holds more of their requests than the runner's
    8 slots (shared by every batch, not 8 each), read from the worker's own load."""
    from services.common.pb import inference_pb2 as ipb
    from services.common.pb import inference_pb2_grpc

    stack = batch_trainer
    _, client = team

    async def load() -> int:
        async with stack.channel(stack.cfg.worker_ports[0]) as ch:
            got = await inference_pb2_grpc.InferenceStub(ch).GetLoad(ipb.GetLoadRequest(), timeout=5)
        return got.running + got.waiting

    made = []
    for name in ("a", "b"):
        f = _upload(client, [_line(f"{name}{i}", _chat_body(model_name, "count", 128)) for i in range(20)])
        made.append(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h").id)
    most, deadline = 0, time.monotonic() + 300
    while {client.batches.retrieve(b).status for b in made} != {"completed"}:
        assert time.monotonic() < deadline
        most = max(most, asyncio.run(load()))
        time.sleep(0.05)
    assert 2 <= most <= 8
    for b in made:
        assert client.batches.retrieve(b).request_counts.completed == 20


def _kill_halfway(stack, admin, base_url, model_name, name: str, kill_and_restart) -> None:
    """Run a batch of 16 lines, call ``kill_and_restart`` once 3 have finished (lines in flight), then hold that
    every line ends exactly once, in the output file, and that each line's request finished exactly once: one
    "ok" usage record per line's request id (a request aborted by the kill is recorded "cancelled" or "error"
    and run again). The usage is the key's alone: a key made for this test."""
    key = _key(admin, f"batch-{name}-crash", f"team-{name}-crash")
    client = openai.OpenAI(base_url=base_url, api_key=key["key"], max_retries=0, timeout=120)
    ids = [f"{name}-{i}" for i in range(16)]
    f = _upload(client, [_line(c, _chat_body(model_name, "go on", 96)) for c in ids])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while client.batches.retrieve(b.id).request_counts.completed < 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    kill_and_restart(client, b.id)
    client = openai.OpenAI(base_url=base_url, api_key=key["key"], max_retries=0, timeout=120)  # new connections
    b = _wait(client, b.id)
    assert b.status == "completed"
    out, err = _every_line_once(client, b, ids)
    assert not err
    usage = {}
    deadline = time.monotonic() + 30
    while set(usage) != {r["id"] for r in out} and time.monotonic() < deadline:
        time.sleep(0.5)  # usage reports are sent in the background (batched; a killed gateway's, from its journal)
        usage = asyncio.run(_ok_requests(stack.cfg.db_url, key["id"]))
    assert set(usage) == {r["id"] for r in out}
    assert all(statuses.count("ok") == 1 for statuses in usage.values()), \
        {k: v for k, v in usage.items() if v != ["ok"]}


def test_a_trainer_killed_halfway_neither_loses_nor_repeats_a_line(batch_trainer, admin, base_url, model_name):
    """The trainer (the batch runner) dies with lines in flight; the gateway aborts those requests (their
    client left) and records nothing for them; an answer the gateway had made was recorded before it went
    back, so it is not made again. The kill comes right after a result is recorded, when the others of its
    wave (the same length, so they end together) are being recorded: the worst moment for it. While the
    trainer is down the gateway answers for batches with a 503."""
    def kill(client, batch_id):
        batch_trainer.stop_proc("trainer", signal.SIGKILL)
        with pytest.raises(openai.APIStatusError) as e:
            client.batches.retrieve(batch_id)
        assert e.value.status_code == 503
        _start_trainer(batch_trainer, TEST_TRAINER_ENV)

    _kill_halfway(batch_trainer, admin, base_url, model_name, "trainer", kill)


def test_a_gateway_killed_halfway_neither_loses_nor_repeats_a_line(batch_trainer, admin, base_url, model_name):
    """The gateway dies with lines in flight: the router aborts their engine requests, the runner cannot reach
    the gateway and waits; once a gateway is back it sends only the lines not done (one the dead gateway had
    recorded is not sent again)."""
    def kill(client, batch_id):
        batch_trainer.stop_proc("gateway", signal.SIGKILL)
        time.sleep(1)
        batch_trainer.spawn("gateway", "services.gateway.main", batch_trainer.env_for("gateway"))
        batch_trainer.wait_for("/models", timeout_s=120, listed=True)

    _kill_halfway(batch_trainer, admin, base_url, model_name, "gateway", kill)


def test_a_worker_killed_halfway_neither_loses_nor_repeats_a_line(batch_trainer, admin, base_url, model_name):
    """The only vLLM worker dies with lines in flight and starts again: meanwhile the lines get 503 (no worker
    serves the model) or a broken generation, which the runner waits out or sends again."""
    def kill(client, batch_id):
        batch_trainer.stop_proc("worker0", signal.SIGKILL)
        batch_trainer.start_worker(0)
        batch_trainer.wait_for("/models", timeout_s=300, listed=True)

    _kill_halfway(batch_trainer, admin, base_url, model_name, "worker", kill)
