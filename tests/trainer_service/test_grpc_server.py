"""The trainer service serves grpc.health.v1 and reflection next to llmsvc.v1.Trainer, and its job metrics."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from services.common.db.job_tables import JOB_STATUSES
from services.trainer import repo


async def test_health_and_reflection(trainer):
    health = health_pb2_grpc.HealthStub(trainer.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service="llmsvc.v1.Trainer"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for resp in reflection_pb2_grpc.ServerReflectionStub(trainer.channel).ServerReflectionInfo(requests()):
        names |= {s.name for s in resp.list_services_response.service}
    assert {"llmsvc.v1.Trainer", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_job_counts_by_status_match_the_database(trainer):
    async with trainer.service.supervisor.sessions() as session:
        counts = await repo.count_by_status(session)
    expected = {s: float(counts.get(s, 0)) for s in JOB_STATUSES}

    def exported() -> dict:
        return {s: REGISTRY.get_sample_value("llmsvc_trainer_jobs", {"status": s}) for s in JOB_STATUSES}

    for _ in range(400):  # the supervisor refreshes them every tick
        if exported() == expected:
            break
        await asyncio.sleep(0.05)
    assert exported() == expected
