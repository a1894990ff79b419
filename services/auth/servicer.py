"""gRPC ``llmsvc.v1.Auth``: one call authenticates the key and admits the request; one settles it
(or one settles a batch of requests: a gateway's reports that piled up while its previous batch was sent)."""

from __future__ import annotations

import asyncio

import grpc

from services.common.identity import IdentityCodec, InvalidIdentity
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .gate import Gate

# Reports per ReportUsageBatch call (the usage recorder writes up to 500 rows per INSERT).
MAX_BATCH = 1000


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, gate: Gate, identity: IdentityCodec | None = None) -> None:
        self.gate = gate
        self.identity = identity or IdentityCodec()

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        if not request.as_identity:
            return await self.gate.admit(request)
        # A batch line: the key is the one the call's signed identity names. Without an internal secret no
        # identity can be signed, so none is trusted.
        if not self.identity.enabled:
            return pb.AdmitResponse(decision=pb.DECISION_UNAUTHENTICATED, code="invalid_api_key",
                                    message="Admission as an identity needs the deployment's internal secret "
                                            "(LLMSVC_INTERNAL_SECRET); send an API key instead.")
        try:
            who = self.identity.verify(context.invocation_metadata())
        except InvalidIdentity as exc:
            return pb.AdmitResponse(decision=pb.DECISION_UNAUTHENTICATED, code="invalid_api_key",
                                    message=f"Refused: {exc}.")
        return await self.gate.admit(request, as_key_id=who.key_id)

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
