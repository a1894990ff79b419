"""gRPC ``llmsvc.v1.Auth``: one call authenticates the key and admits the request; one settles it
(or one settles a batch of requests: a gateway's reports that piled up while its previous batch was sent)."""

from __future__ import annotations

import asyncio

import grpc

from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .gate import Gate

# Reports per ReportUsageBatch call (the usage recorder writes up to 500 rows per INSERT).
MAX_BATCH = 1000


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        return await self.gate.admit(request)

    async def ReportUsage(self, request: pb.ReportUsageRequest,
                          context: grpc.aio.ServicerContext) -> pb.ReportUsageResponse:
        return pb.ReportUsageResponse(outcome=await self.gate.report(request))

    async def ReportUsageBatch(self, request: pb.ReportUsageBatchRequest,
                               context: grpc.aio.ServicerContext) -> pb.ReportUsageBatchResponse:
        if len(request.reports) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"A batch holds at most {MAX_BATCH} reports; this one has {len(request.reports)}.")
        # Concurrent, so the recorder's group commit writes the batch as one INSERT and one commit. If any
        # report fails the call fails, and the caller retries the whole batch: reports are idempotent.
        outcomes = await asyncio.gather(*(self.gate.report(r) for r in request.reports))
        return pb.ReportUsageBatchResponse(outcomes=outcomes)
