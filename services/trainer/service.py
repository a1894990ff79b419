"""Assembly of the trainer service: database, store, runner, supervisor and gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.engine import make_engine, session_factory
from services.common.db.migrate import upgrade_async
from services.common.grpcutil import build_server, set_serving
from services.common.pb import batches_pb2_grpc, trainer_pb2_grpc

from .batches.runner import BatchRunner
from .batches.servicer import BatchesServicer
from .batches.store import BatchStore
from .config import TrainerSettings
from .evals import EvalLauncher
from .files import FileStore
from .finish import RouterWarmer
from .jobs import JobFactory, JobLimits
from .notifier import Notifier
from .runners import Runner, build_runner
from .servicer import TrainerServicer
from .store import ModelStore
from .supervisor import Supervisor, SupervisorConfig

log = logging.getLogger(__name__)
SERVICE = "llmsvc.v1.Trainer"
BATCHES = "llmsvc.v1.Batches"


@dataclass
class TrainerService:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    supervisor: Supervisor
    batches: BatchRunner
    engine: AsyncEngine
    port: int

    async def stop(self, grace_s: float, *, suspend: bool = True) -> None:
        await set_serving(self.health, [SERVICE, BATCHES], False)
        await self.server.stop(grace_s)
        await self.batches.close()
        await self.supervisor.close(suspend=suspend)
        for client in (self.supervisor.finisher.warm, self.supervisor.finisher.evals):
            if client is not None:
                await client.close()
        await self.engine.dispose()


async def start(settings: TrainerSettings, runner: Runner | None = None) -> TrainerService:
    """Migrate, then serve on ``settings.host:settings.port`` (0 picks a free port) and supervise jobs."""
    if settings.migrate_on_start:
        await upgrade_async(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    runner = runner or build_runner(settings)
    store = ModelStore(settings.model_store)
    notifier = Notifier()
    warm = RouterWarmer(settings.router_addr) if settings.router_addr else None
    evals = EvalLauncher(settings.eval_addr) if settings.eval_addr else None
    supervisor = Supervisor(sessions, store, runner, notifier, SupervisorConfig(
        settings.max_concurrent_jobs, settings.poll_interval_s, settings.cancel_grace_s, settings.lease_ttl_s,
        max_job_s=settings.max_job_hours * 3600), warm=warm, evals=evals)
    limits = JobLimits(settings.max_active_jobs_per_owner, settings.max_steps, settings.max_nodes,
                       settings.max_nproc_per_node)
    factory = JobFactory(store, runner, settings.data_dirs, limits, evals=evals is not None)
    files = FileStore(settings.files_dir, sessions, settings.max_upload_mib * 2**20,
                      settings.max_batch_file_mib * 2**20)
    servicer = TrainerServicer(sessions, files, factory, supervisor, notifier)
    batches = BatchRunner(sessions, files, gateway_url=settings.gateway_url, leader=lambda: supervisor.leader,
                          concurrency=settings.batch_concurrency, request_timeout_s=settings.batch_request_timeout_s,
                          poll_interval_s=settings.poll_interval_s)
    server, health_servicer = build_server(
        "trainer", [(trainer_pb2_grpc.add_TrainerServicer_to_server, servicer, SERVICE),
                    (batches_pb2_grpc.add_BatchesServicer_to_server,
                     BatchesServicer(BatchStore(sessions, files, settings.max_batch_lines), batches), BATCHES)])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    supervisor.start()
    batches.start()
    await set_serving(health_servicer, [SERVICE, BATCHES], True)
    log.info("trainer on %s:%d (runner %s, store %s)", settings.host, port, runner.name, settings.model_store)
    return TrainerService(server, health_servicer, supervisor, batches, engine, port)
