"""Router entry point: ``llmsvc router`` or ``python -m services.router.main``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.engine import make_engine, session_factory
from services.common.grpcutil import build_server, run_service, serve_until_signalled, set_serving
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server

from .adapters import AdapterCatalog
from .admission import AdmissionControl
from .config import RouterSettings
from .discovery import start_discovery
from .ondemand import OnDemand
from .policies import PolicyTable
from .pool import WorkerPool
from .servicer import RouterServicer
from .wire import add_router_servicer

log = logging.getLogger(__name__)
SERVICE = "llmsvc.v1.Router"


@dataclass
class Router:
    """A started router: what tests and :func:`serve` need to hold on to."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    servicer: RouterServicer
    port: int
    discovery: asyncio.Task | None
    db_engine: AsyncEngine | None = None

    async def close(self, grace_s: float = 0.0) -> None:
        if self.discovery:
            self.discovery.cancel()
        await self.server.stop(grace_s)
        if self.servicer.ondemand is not None:
            await asyncio.to_thread(self.servicer.ondemand.close)
        await self.servicer.pool.close()
        if self.db_engine is not None:
            await self.db_engine.dispose()


def build_ondemand(settings: RouterSettings, pool: WorkerPool, catalog: AdapterCatalog) -> OnDemand | None:
    """The starter of full versions no worker serves (``settings.ondemand``), or None."""
    if settings.ondemand == "slots":
        from services.lifecycle.launcher import SlotLauncher

        unpolled = sorted(set(settings.worker_slots) - set(settings.workers))
        if unpolled:
            raise ValueError(f"worker slots {unpolled} are not among LLMSVC_ROUTER_WORKERS: the router would never "
                             "see a worker started there")
        launcher = SlotLauncher(settings.worker_slots, Path(settings.logs_dir or "."), settings.worker_slot_cpus,
                                settings.worker_env)
    elif settings.ondemand == "kubernetes":
        from services.lifecycle.kubernetes import DeploymentLauncher

        launcher = DeploymentLauncher.from_settings(settings.ondemand_template, settings.k8s_namespace,
                                                    settings.ondemand_max_versions)
    else:
        return None

    async def aliased() -> set[str]:
        return set((await catalog.owners())[1].values())

    return OnDemand(launcher, pool, max_versions=settings.ondemand_max_versions, load_wait_s=settings.load_wait_s,
                    idle_stop_s=settings.idle_stop_s, start_timeout_s=settings.start_timeout_s, aliased=aliased)


async def start_router(settings: RouterSettings) -> Router:
    """Build the pool, policies and queues, bind the port (0 = any) and start serving."""
    pool = WorkerPool(settings.workers if settings.discovery == "static" else [], settings.poll_interval_s,
                      settings.poll_timeout_s, settings.readmit_checks, settings.multiplex)
    policies = PolicyTable(settings)
    admission = AdmissionControl(lambda model: settings.max_in_flight_per_worker * len(pool.routable(model)),
                                 settings.queue_size, settings.queue_timeout_s, settings.batch_queue_share)
    pool.on_admit += [policies.forget, lambda _address: admission.wake()]
    pool.on_models.append(admission.know)
    catalog = db_engine = ondemand = None
    if settings.database_url:
        db_engine = make_engine(settings.database_url, pool_size=2)
        catalog = AdapterCatalog(session_factory(db_engine), ttl_s=settings.adapter_cache_ttl_s)
        ondemand = build_ondemand(settings, pool, catalog)
    servicer = RouterServicer(pool, policies, admission, settings.max_attempts, catalog, ondemand)
    server, health_servicer = build_server("router", [(add_router_servicer, servicer, SERVICE)])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    discovery = start_discovery(pool, settings)
    pool.start()
    if ondemand is not None:
        ondemand.start()
    await server.start()
    await set_serving(health_servicer, [SERVICE], True)
    log.info("router on %s:%d (discovery %s, policy %s, overrides %s)", settings.host, port, settings.discovery,
             settings.policy, settings.model_policies or "none")
    return Router(server, health_servicer, servicer, port, discovery, db_engine)


async def serve(settings: RouterSettings) -> None:
    router = await start_router(settings)
    try:
        async def drain() -> None:  # multiplexed calls end once their streams have; new streams go elsewhere
            router.servicer.draining = True

        await serve_until_signalled(router.server, router.health, [SERVICE], settings.grace_s, on_drain=drain)
    finally:
        await router.close()


def main() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.host)  # beside the service: loopback locally
    run_service(serve(settings))


if __name__ == "__main__":
    main()
