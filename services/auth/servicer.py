"""gRPC ``llmsvc.v1.Auth``: one call authenticates the key and admits the request; one settles it."""

from __future__ import annotations

import grpc

from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .gate import Gate


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        return await self.gate.admit(request)

    async def ReportUsage(self, request: pb.ReportUsageRequest,
                          context: grpc.aio.ServicerContext) -> pb.ReportUsageResponse:
        return pb.ReportUsageResponse(outcome=await self.gate.report(request))
