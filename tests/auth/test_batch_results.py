"""``BatchResults.RecordLine`` (auth, on PostgreSQL): where the gateway records a batch line's answer.

A real auth server in this process with a deployment secret, on a database of this module's own (no stack's
batch runner picks the test's batch up). A line is recorded once: the first answer marks it done, counts it in
its batch (completed or failed, and its tokens) and writes the request's usage record in the same transaction;
a second answer for it changes nothing, its usage included, and says so. The gateway's own usage report of
the recorded request, which follows, is a duplicate. Another owner's batch is NOT_FOUND, as one that does not
exist; a call without a signed identity is refused.
"""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import select

from services.common.db.auth_tables import UsageRecord
from services.common.db.base import utcnow
from services.common.db.batch_tables import Batch, BatchLine
from services.common.db.engine import make_engine, session_factory
from services.common.db.migrate import upgrade
from services.common.grpcutil import insecure_channel
from services.common.identity import Identity, IdentityCodec, service_token
from services.common.pb import auth_pb2, auth_pb2_grpc, batches_pb2_grpc
from services.common.pb import batches_pb2 as pb

from .conftest import auth_server

SECRET = "batch-results-secret"


@pytest.fixture(scope="module")
def batch_db(pg_database) -> str:
    url = pg_database()
    upgrade(url)
    return url


def _md(owner: str):
    return IdentityCodec(SECRET).metadata(Identity(owner=owner, key_id=f"key-{owner}"))


async def _make_batch(url: str, batch_id: str) -> None:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s, s.begin():
            now = utcnow()
            s.add(Batch(id=batch_id, owner="team-a", key_id="key-team-a", endpoint="/v1/chat/completions",
                        input_file_id="file-x", completion_window="24h", status="in_progress", model="m",
                        batch_metadata={}, errors=[], output_file_id="", error_file_id="", total=2, completed=0,
                        failed=0, input_tokens=0, output_tokens=0, created_at=now,
                        expires_at=now + timedelta(hours=24), in_progress_at=now))
            await s.flush()
            for line in (1, 2):
                s.add(BatchLine(batch_id=batch_id, line=line, custom_id=f"c{line}", body="{}", done=False,
                                status_code=0, request_id="", response=""))
    finally:
        await engine.dispose()


async def _batch(url: str, batch_id: str) -> Batch:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            return await s.get(Batch, batch_id)
    finally:
        await engine.dispose()


async def _usage(url: str) -> dict[str, tuple]:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            rows = (await s.execute(select(UsageRecord))).scalars()
            return {r.reservation_id: (r.request_id, r.key_id, r.status, r.prompt_tokens, r.completion_tokens)
                    for r in rows}
    finally:
        await engine.dispose()


def _report(reservation: str, request_id: str) -> auth_pb2.ReportUsageRequest:
    return auth_pb2.ReportUsageRequest(reservation_id=reservation, request_id=request_id, key_id="key-team-a",
                                       model="m", prompt_tokens=5, completion_tokens=7, status="ok", latency_s=0.5)


async def test_a_line_is_recorded_once_for_its_owner_with_its_usage(tmp_path, batch_db, admin_secret, monkeypatch):
    monkeypatch.setenv("LLMSVC_INTERNAL_SECRET", SECRET)
    await _make_batch(batch_db, "batch_t1")
    async with auth_server(tmp_path, batch_db, admin_secret) as auth:
        channel = insecure_channel(auth.address, token=service_token(SECRET))
        stub = batches_pb2_grpc.BatchResultsStub(channel)
        try:
            ok = pb.LineResult(batch_id="batch_t1", line=1, status_code=200, request_id="batch_req_1",
                               body_json=json.dumps({"object": "chat.completion"}), input_tokens=5, output_tokens=7,
                               usage=_report("res-1", "batch_req_1"))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.RecordLine(ok, metadata=_md("team-b"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.RecordLine(ok)  # no identity
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await _usage(batch_db) == {}  # neither refused call wrote anything
            assert (await stub.RecordLine(ok, metadata=_md("team-a"))).recorded
            assert await _usage(batch_db) == {"res-1": ("batch_req_1", "key-team-a", "ok", 5, 7)}
            again = pb.LineResult(batch_id="batch_t1", line=1, status_code=200, request_id="batch_req_1b",
                                  body_json="{}", input_tokens=5, output_tokens=7,
                                  usage=_report("res-1b", "batch_req_1b"))
            assert not (await stub.RecordLine(again, metadata=_md("team-a"))).recorded  # once
            assert set(await _usage(batch_db)) == {"res-1"}  # the second answer's usage is its gateway's to report
            bad = pb.LineResult(batch_id="batch_t1", line=2, status_code=400, request_id="batch_req_2",
                                body_json='{"error": {}}')
            assert (await stub.RecordLine(bad, metadata=_md("team-a"))).recorded
            b = await _batch(batch_db, "batch_t1")
            assert (b.completed, b.failed, b.input_tokens, b.output_tokens) == (1, 1, 5, 7)
            # The gateway's own report of the recorded request follows: counted once.
            reply = await auth_pb2_grpc.AuthStub(channel).ReportUsage(_report("res-1", "batch_req_1"), timeout=10)
            assert reply.outcome == "duplicate"
        finally:
            await channel.close()
