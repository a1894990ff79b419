"""Every gRPC service of the running stack serves grpc.health.v1 and reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def _health_and_services(stack, address: str, service: str) -> tuple[int, set[str]]:
    async with stack.channel(address) as ch:
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
    status, names = asyncio.run(_health_and_services(stack, f"{stack.cfg.host}:{port}", service))
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


@pytest.mark.parametrize("role", ["auth", "router", "worker", "trainer", "eval"])
def test_a_call_without_the_service_token_is_refused_by_every_service(stack, role):
    """A pod that can reach a service's port but does not hold the deployment's internal secret (a training
    or eval job, a stranger in the namespace) gets UNAUTHENTICATED from every method but the health check,
    whatever it sends: no token, or one derived from another secret."""
    from services.common.grpcutil import insecure_channel
    from services.common.identity import service_token
    from services.common.pb import (
        auth_pb2,
        auth_pb2_grpc,
        eval_pb2,
        eval_pb2_grpc,
        inference_pb2,
        inference_pb2_grpc,
        router_pb2,
        router_pb2_grpc,
        trainer_pb2,
        trainer_pb2_grpc,
    )

    port = {"auth": stack.cfg.auth_port, "router": stack.cfg.router_port, "worker": stack.cfg.worker_ports[0],
            "trainer": stack.cfg.trainer_port, "eval": stack.cfg.eval_port}[role]
    calls = {
        "auth": lambda ch: auth_pb2_grpc.AuthStub(ch).Admit(auth_pb2.AdmitRequest(api_key=stack.cfg.api_key)),
        "router": lambda ch: router_pb2_grpc.RouterStub(ch).ListWorkers(router_pb2.ListWorkersRequest()),
        "worker": lambda ch: inference_pb2_grpc.InferenceStub(ch).Drain(inference_pb2.DrainRequest()),
        "trainer": lambda ch: trainer_pb2_grpc.TrainerStub(ch).ListJobs(trainer_pb2.ListJobsRequest()),
        "eval": lambda ch: eval_pb2_grpc.EvalStub(ch).Rollback(eval_pb2.RollbackRequest(alias="x")),
    }

    async def attempt(token: str) -> grpc.StatusCode:
        async with insecure_channel(f"{stack.cfg.host}:{port}", token=token) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
            try:
                await calls[role](ch)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    for token in ("", service_token("some-other-deployment")):
        assert asyncio.run(attempt(token)) == grpc.StatusCode.UNAUTHENTICATED
