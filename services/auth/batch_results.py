"""The ``BatchResults`` service: the gateway records a batch line's answer here before it answers the runner.

Recording where the answer is made, not where it is received, is what keeps a line from running twice: a
runner that dies after the gateway made an answer finds the line done when it (or the next runner) comes
back; one that dies before gets its request aborted by the gateway, and nothing is recorded. It lives in auth
because auth already holds the gateway's stored state (``ResponseStore``) and keeps running when the trainer,
which runs the batches, does not.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from sqlalchemy.exc import SQLAlchemyError

from services.common.db.batch_tables import Batch, record_line
from services.common.db.engine import session_factory
from services.common.identity import Identity, IdentityCodec
from services.common.pb import batches_pb2 as pb
from services.common.pb import batches_pb2_grpc

from . import metrics
from .gate import Gate
from .store import Store, UsageRow

log = logging.getLogger(__name__)
BATCH_RESULTS_SERVICE = "llmsvc.v1.BatchResults"


class BatchResultsServicer(batches_pb2_grpc.BatchResultsServicer):
    """Records lines with group commit: the lines that arrive while one transaction is being written go
    together in the next (a batch's lines often end together: the same length, decoded side by side)."""

    def __init__(self, store: Store, gate: Gate, timeout_s: float = 5.0, codec: IdentityCodec | None = None) -> None:
        self.store = store
        self.gate = gate
        self.sessions = session_factory(store.engine)
        self.timeout_s = timeout_s
        self.codec = codec or IdentityCodec()
        self._pending: list[tuple[Identity, pb.LineResult, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def RecordLine(self, request: pb.LineResult, context) -> pb.RecordLineReply:
        who = await self.codec.caller(context)
        done = asyncio.get_running_loop().create_future()
        self._pending.append((who, request, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        try:
            recorded = await asyncio.wait_for(asyncio.shield(done), self.timeout_s)
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            log.warning("batch results: database unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "The batch results' database is unavailable.")
        if recorded is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No batch found with id '{request.batch_id[:100]}'.")
        return pb.RecordLineReply(recorded=recorded)

    async def _write(self) -> None:
        while self._pending:
            items, self._pending = self._pending, []
            try:
                results, usage, written = [], [], set()
                async with self.sessions() as session, session.begin():
                    for who, r, _ in items:
                        batch = await session.get(Batch, r.batch_id)
                        if batch is None or not who.may_see(batch.owner):
                            results.append(None)
                            continue
                        recorded = await record_line(session, r.batch_id, int(r.line), r.status_code, r.request_id,
                                                     r.body_json or "{}", max(0, r.input_tokens),
                                                     max(0, r.output_tokens))
                        results.append(recorded)
                        if recorded and r.HasField("usage"):
                            usage.append(r.usage)
                    if usage:  # with the lines, or not at all
                        written = await self.store.insert_usage_in(session, [UsageRow.from_report(u) for u in usage])
            except Exception as exc:  # noqa: BLE001 - every waiter gets the failure; the next group goes on
                for *_, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            metrics.USAGE_RECORDS.labels("written").inc(len(written))
            for (*_, fut), result in zip(items, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            # Settled as ReportUsage would; idempotent, so the gateway's own report (which follows unless the
            # gateway died) settles nothing twice. Done after the answers: the callers need not wait for it.
            for u, outcome in zip(usage, await asyncio.gather(*map(self.gate.settle, usage), return_exceptions=True),
                                  strict=True):
                if isinstance(outcome, Exception):  # a lost settle only over-counts until the window passes
                    log.warning("batch results: settling %s: %s", u.reservation_id, outcome)
