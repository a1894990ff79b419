"""``BatchResults.RecordLine`` (auth, on PostgreSQL): where the gateway records a batch line's answer.

A real auth server in this process with a deployment secret. A line is recorded once: the first answer marks
it done and counts it in its batch (completed or failed, and its tokens); a second answer for it changes
nothing and says so. Another owner's batch is NOT_FOUND, as one that does not exist; a call without a signed
identity is refused.
"""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest

from services.common.db.base import utcnow
from services.common.db.batch_tables import Batch, BatchLine
from services.common.db.engine import make_engine, session_factory
from services.common.grpcutil import insecure_channel
from services.common.identity import Identity, IdentityCodec, service_token
from services.common.pb import batches_pb2 as pb
from services.common.pb import batches_pb2_grpc

from .conftest import auth_server

SECRET = "batch-results-secret"


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


async def test_a_line_is_recorded_once_for_its_owner(tmp_path, auth_db, admin_secret, monkeypatch):
    monkeypatch.setenv("LLMSVC_INTERNAL_SECRET", SECRET)
    await _make_batch(auth_db, "batch_t1")
    async with auth_server(tmp_path, auth_db, admin_secret) as auth:
        channel = insecure_channel(auth.address, token=service_token(SECRET))
        stub = batches_pb2_grpc.BatchResultsStub(channel)
        try:
            ok = pb.LineResult(batch_id="batch_t1", line=1, status_code=200, request_id="batch_req_1",
                               body_json=json.dumps({"object": "chat.completion"}), input_tokens=5, output_tokens=7)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.RecordLine(ok, metadata=_md("team-b"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.RecordLine(ok)  # no identity
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (await stub.RecordLine(ok, metadata=_md("team-a"))).recorded
            assert not (await stub.RecordLine(ok, metadata=_md("team-a"))).recorded  # once
            bad = pb.LineResult(batch_id="batch_t1", line=2, status_code=400, request_id="batch_req_2",
                                body_json='{"error": {}}')
            assert (await stub.RecordLine(bad, metadata=_md("team-a"))).recorded
            b = await _batch(auth_db, "batch_t1")
            assert (b.completed, b.failed, b.input_tokens, b.output_tokens) == (1, 1, 5, 7)
        finally:
            await channel.close()
