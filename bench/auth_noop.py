"""A no-op ``llmsvc.v1.Auth``: admits everything at once, with fixed rate-limit state; the benchmark's baseline.

Spawned in the real auth service's place (same ``LLMSVC_AUTH_HOST``/``PORT``),
so the gateway makes the same gRPC call and renders the same headers; the
difference to the real service is the cost of keys, limits and the ledger.

    .venv/bin/python -m bench.auth_noop
"""

from __future__ import annotations

import asyncio
import os

from services.common.grpcutil import build_server, serve_until_signalled, set_serving
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

SERVICE = "llmsvc.v1.Auth"
STATE = pb.RateLimitState(limit_requests=10**6, remaining_requests=10**6 - 1, reset_requests_s=60,
                          limit_tokens=10**9, remaining_tokens=10**9 - 1, reset_tokens_s=60)


class NoopAuth(auth_pb2_grpc.AuthServicer):
    async def Admit(self, request, context):
        return pb.AdmitResponse(decision=pb.DECISION_ALLOWED, rate_limit=STATE, key_id="noop",
                                reservation_id="noop", scopes=["chat", "train", "eval", "admin"])

    async def ReportUsage(self, request, context):
        return pb.ReportUsageResponse(outcome="written")

    async def ReportUsageBatch(self, request, context):
        return pb.ReportUsageBatchResponse(outcomes=["written"] * len(request.reports))


async def serve(host: str, port: int) -> None:
    server, health = build_server("auth", [(auth_pb2_grpc.add_AuthServicer_to_server, NoopAuth(), SERVICE)])
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await set_serving(health, [SERVICE], True)
    await serve_until_signalled(server, health, [SERVICE], 1.0)


if __name__ == "__main__":
    asyncio.run(serve(os.environ.get("LLMSVC_AUTH_HOST", "127.0.0.1"),
                      int(os.environ.get("LLMSVC_AUTH_PORT", "50051"))))
