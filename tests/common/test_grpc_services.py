"""Every gRPC service of the running stack serves grpc.health.v1 and reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def _health_and_services(address: str, service: str) -> tuple[int, set[str]]:
    async with grpc.aio.insecure_channel(address) as ch:
        status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: set[str] = set()
        async for resp in stub.ServerReflectionInfo(requests(), timeout=5):
            names |= {s.name for s in resp.list_services_response.service}
        return status.status, names


@pytest.mark.parametrize("role,service", [("auth", "llmsvc.v1.Auth"), ("router", "llmsvc.v1.Router"),
                                          ("worker", "llmsvc.v1.Inference")])
def test_health_and_reflection(stack, role, service):
    port = {"auth": stack.cfg.auth_port, "router": stack.cfg.router_port, "worker": stack.cfg.worker_ports[0]}[role]
    status, names = asyncio.run(_health_and_services(f"{stack.cfg.host}:{port}", service))
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_unknown_service_health_is_not_found(stack):
    async def check() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"{stack.cfg.host}:{stack.cfg.router_port}") as ch:
            try:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert asyncio.run(check()) == grpc.StatusCode.NOT_FOUND
