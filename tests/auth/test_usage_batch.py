"""ReportUsageBatch (auth) and the gateway's UsageReporter that sends it.

Auth runs as a real gRPC server on a real port (SQLite file, in-process limiter). The reporter's fallback
test stands up a real gRPC server of its own that implements only ReportUsage, as an older auth replica
would.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.auth.servicer import MAX_BATCH
from services.common.db.engine import sqlite_url
from services.common.db.migrate import upgrade
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc
from services.gateway.usage_reports import UsageReporter

from .conftest import auth_server, create_key


def _report(r: pb.AdmitResponse, i: int, completion: int) -> pb.ReportUsageRequest:
    return pb.ReportUsageRequest(reservation_id=r.reservation_id, request_id=f"b{i}", key_id=r.key_id, model="m",
                                 prompt_tokens=10, completion_tokens=completion, status="ok", latency_s=0.1)


async def test_a_batch_settles_and_records_each_report_once(tmp_path, admin_secret):
    url = sqlite_url(tmp_path / "batch.db")
    upgrade(url)
    async with auth_server(tmp_path, url, admin_secret) as a:
        key = await create_key(a.admin, a.admin_md, name="batch", tpm=1000, allowed_models=["m"])
        admitted = [await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, model="m", reserve_tokens=100,
                                                       request_id=f"b{i}")) for i in range(8)]
        assert all(r.decision == pb.DECISION_ALLOWED for r in admitted)
        # 8 × 100 reserved of 1000: a ninth 300-token reservation does not fit until the batch settles.
        assert (await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, model="m", reserve_tokens=300))).decision \
            == pb.DECISION_RATE_LIMITED

        reports = [_report(r, i, i) for i, r in enumerate(admitted)]
        # The same reservation twice in one batch: written once, the second is a duplicate.
        got = await a.auth.ReportUsageBatch(pb.ReportUsageBatchRequest(reports=[*reports, reports[0]]))
        assert list(got.outcomes) == ["written"] * 8 + ["duplicate"]
        again = await a.auth.ReportUsageBatch(pb.ReportUsageBatchRequest(reports=reports[:3]))
        assert list(again.outcomes) == ["duplicate"] * 3

        usage = await a.admin.GetKeyUsage(pb.GetKeyUsageRequest(key_id=key.key.id), metadata=a.admin_md)
        assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (8, 80, sum(range(8)))
        # Settled to 10 + i tokens each (108 in all), so 300 more now fit in the minute's 1000.
        assert (await a.auth.Admit(pb.AdmitRequest(api_key=key.secret, model="m", reserve_tokens=300))).decision \
            == pb.DECISION_ALLOWED

        empty = await a.auth.ReportUsageBatch(pb.ReportUsageBatchRequest())
        assert list(empty.outcomes) == []
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await a.auth.ReportUsageBatch(pb.ReportUsageBatchRequest(reports=[reports[0]] * (MAX_BATCH + 1)))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(MAX_BATCH) in exc.value.details()


async def test_reporter_batches_reports_that_arrive_while_a_call_is_in_flight(tmp_path, admin_secret):
    url = sqlite_url(tmp_path / "reporter.db")
    upgrade(url)
    async with auth_server(tmp_path, url, admin_secret) as a:
        key = await create_key(a.admin, a.admin_md, name="reporter", allowed_models=["m"])
        admitted = await asyncio.gather(*(a.auth.Admit(pb.AdmitRequest(api_key=key.secret, model="m",
                                                                       reserve_tokens=50, request_id=f"b{i}"))
                                          for i in range(60)))
        calls: list[int] = []
        stub = a.auth

        class CountingAuth:
            async def ReportUsageBatch(self, request, **kw):
                calls.append(len(request.reports))
                return await stub.ReportUsageBatch(request, **kw)

        reporter = UsageReporter(CountingAuth())
        reporter.add(_report(admitted[0], 0, 5))
        await asyncio.sleep(0)  # the first report's call is now in flight
        for i, r in enumerate(admitted[1:40], 1):  # 39 requests end meanwhile
            reporter.add(_report(r, i, 5))
        await reporter.drain()
        # The first report went at once and alone; the 39 that queued behind it went as one call.
        assert calls == [1, 39]
        for i, r in enumerate(admitted[40:], 40):  # nothing in flight: a burst in one go is one call
            reporter.add(_report(r, i, 5))
        await reporter.drain()
        assert calls == [1, 39, 20]
        usage = await a.admin.GetKeyUsage(pb.GetKeyUsageRequest(key_id=key.key.id), metadata=a.admin_md)
        assert (usage.requests, usage.completion_tokens) == (60, 300)


class _OldAuth(auth_pb2_grpc.AuthServicer):
    """An auth replica from before ReportUsageBatch: ReportUsage only (the rest answers UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.fail_first = 0

    async def ReportUsage(self, request, context):
        if self.fail_first:
            self.fail_first -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        self.seen.append(request.request_id)
        return pb.ReportUsageResponse(outcome="written")


async def test_reporter_falls_back_to_one_call_per_report_and_retries():
    servicer = _OldAuth()
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reporter = UsageReporter(auth_pb2_grpc.AuthStub(channel))
            servicer.fail_first = 1  # the first ReportUsage fails: the batch is retried after 0.2 s
            for i in range(5):
                reporter.add(pb.ReportUsageRequest(reservation_id=f"r{i}", request_id=f"q{i}", key_id="k",
                                                   model="m", completion_tokens=1, status="ok"))
            await reporter.drain()
            # Every report arrived; the retried batch may repeat some (auth dedupes by reservation id).
            assert {f"q{i}" for i in range(5)} <= set(servicer.seen)
            assert not reporter._batch_rpc
    finally:
        await server.stop(None)
