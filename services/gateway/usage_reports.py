"""The gateway's usage reports to auth: journaled to disk first, then sent in the background, batched,
retried (see :mod:`.usage_journal` for what survives a killed gateway)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common.grpcutil import request_metadata
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .usage_journal import UsageJournal

log = logging.getLogger(__name__)

# Reports are idempotent by reservation id, so a batch is retried through an auth restart or failover.
_REPORT_BACKOFF_S = (0.2, 0.5, 1, 2, 4, 8, 15, 30)
_MAX_BATCH = 500


class UsageReporter:
    """Sends the requests' usage to auth in the background, many requests per call; clients never wait.

    Group commit, as auth's own usage recorder does: a report that finds nothing in flight goes at once,
    alone; reports that arrive while a batch is in flight go together in the next ReportUsageBatch call.
    Under load that is one call per batch instead of one per request, on the gateway and on auth alike,
    and nothing waits for a batch to fill. A failed batch is retried whole, for about a minute, then
    logged as lost; an auth without ReportUsageBatch (an older replica) gets one ReportUsage per report.
    """

    def __init__(self, auth: auth_pb2_grpc.AuthStub, journal: UsageJournal | None = None) -> None:
        self._auth = auth
        self._queue: list[pb.ReportUsageRequest] = []
        self._task: asyncio.Task | None = None
        self._batch_rpc = True
        self._journal = journal
        self._undelivered = 0  # reports given up on: their journal must not be emptied
        if journal is not None:
            for message in journal.adopt():  # a killed gateway's reports, sent again (auth dedupes)
                self.add(message, running=False)

    def add(self, message: pb.ReportUsageRequest, running: bool = True) -> None:
        if self._journal is not None:
            self._journal.append(message)  # on disk before anything can lose it
        self._queue.append(message)
        if running and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush())

    def start(self) -> None:
        """Send what :meth:`add` queued before the event loop ran (adopted reports)."""
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            await self._send(batch)
        if self._journal is not None and not self._undelivered:
            self._journal.all_delivered()  # nothing queued or in flight: all in the file reached auth

    async def _send(self, batch: list[pb.ReportUsageRequest]) -> None:
        for delay in (*_REPORT_BACKOFF_S, None):
            try:
                await self._call(batch)
                return
            except grpc.aio.AioRpcError as exc:
                if delay is None or exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    kept = (f"; kept in {self._journal.path} for the next start" if self._journal is not None
                            and exc.code() != grpc.StatusCode.INVALID_ARGUMENT else "")
                    if kept:
                        self._undelivered += len(batch)
                    log.error("usage report failed (%s): %d requests' usage not delivered (%d tokens)%s: %s",
                              exc.code().name, len(batch), sum(m.prompt_tokens + m.completion_tokens for m in batch),
                              kept, ", ".join(m.request_id for m in batch[:5]) + (" …" if len(batch) > 5 else ""))
                    return
                log.warning("usage report of %d requests failed (%s); retrying in %.1fs", len(batch),
                            exc.code().name, delay)
                await asyncio.sleep(delay)

    async def _call(self, batch: list[pb.ReportUsageRequest]) -> None:
        auth = self._auth
        if self._batch_rpc:
            try:
                await auth.ReportUsageBatch(pb.ReportUsageBatchRequest(reports=batch), timeout=10.0,
                                            metadata=request_metadata(batch[0].request_id))
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._batch_rpc = False
                log.info("auth has no ReportUsageBatch; reporting usage one request per call")
        await asyncio.gather(*(auth.ReportUsage(m, timeout=10.0, metadata=request_metadata(m.request_id))
                               for m in batch))

    async def drain(self, timeout_s: float = 10.0) -> None:
        """At shutdown: give queued reports time to land before the channel closes; the journal is removed
        only when they all did (else the next gateway to start sends them)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=timeout_s)
        if self._journal is not None:
            done = (self._task is None or self._task.done()) and not self._queue and not self._undelivered
            self._journal.close(delivered=done)
