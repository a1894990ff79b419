"""gRPC ``llmsvc.v1.Auth``: one call authenticates the key and admits the request."""

from __future__ import annotations

import hashlib
import hmac
import logging

import grpc

from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

log = logging.getLogger(__name__)


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, api_key: str) -> None:
        # Keep only a digest so the secret never sits in memory dumps of request state.
        self._digest = hashlib.sha256(api_key.encode()).digest()

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        given = hashlib.sha256(request.api_key.encode("utf-8", "surrogatepass")).digest()
        if not request.api_key or not hmac.compare_digest(given, self._digest):
            return pb.AdmitResponse(
                decision=pb.DECISION_UNAUTHENTICATED,
                code="invalid_api_key",
                message="Incorrect API key provided.",
            )
        return pb.AdmitResponse(decision=pb.DECISION_ALLOWED, key_id="bootstrap", scopes=["chat", "train", "eval", "admin"])

    async def ReportUsage(self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext):
        log.info("usage key=%s model=%s prompt=%d completion=%d status=%s", request.key_id, request.model,
                 request.prompt_tokens, request.completion_tokens, request.status)
        return pb.ReportUsageResponse()
