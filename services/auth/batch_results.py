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
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.batch_tables import Batch, record_line
from services.common.db.engine import session_factory
from services.common.identity import IdentityCodec
from services.common.pb import batches_pb2 as pb
from services.common.pb import batches_pb2_grpc

log = logging.getLogger(__name__)
BATCH_RESULTS_SERVICE = "llmsvc.v1.BatchResults"


class BatchResultsServicer(batches_pb2_grpc.BatchResultsServicer):
    def __init__(self, engine: AsyncEngine, timeout_s: float = 5.0, codec: IdentityCodec | None = None) -> None:
        self.sessions = session_factory(engine)
        self.timeout_s = timeout_s
        self.codec = codec or IdentityCodec()

    async def RecordLine(self, request: pb.LineResult, context) -> pb.RecordLineReply:
        who = await self.codec.caller(context)

        async def record() -> bool | None:
            async with self.sessions() as session, session.begin():
                batch = await session.get(Batch, request.batch_id)
                if batch is None or not who.may_see(batch.owner):
                    return None
                return await record_line(session, request.batch_id, int(request.line), request.status_code,
                                         request.request_id, request.body_json or "{}",
                                         max(0, request.input_tokens), max(0, request.output_tokens))

        try:
            recorded = await asyncio.wait_for(record(), self.timeout_s)
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            log.warning("batch results: database unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "The batch results' database is unavailable.")
        if recorded is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No batch found with id '{request.batch_id[:100]}'.")
        return pb.RecordLineReply(recorded=recorded)
