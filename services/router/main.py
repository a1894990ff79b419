"""Router entry point: ``llmsvc router`` or ``python -m services.router.main``."""

from __future__ import annotations

import asyncio
import logging

from services.common.grpcutil import build_server, serve_until_signalled, set_serving
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server
from services.common.pb import router_pb2_grpc

from .config import RouterSettings
from .policies import make_policy
from .pool import WorkerPool
from .servicer import RouterServicer

log = logging.getLogger(__name__)
SERVICE = "llmsvc.v1.Router"


async def serve(settings: RouterSettings) -> None:
    pool = WorkerPool(settings.workers, settings.poll_interval_s, settings.poll_timeout_s)
    servicer = RouterServicer(pool, make_policy("least_load"), settings.max_attempts)
    server, health = build_server("router", [(router_pb2_grpc.add_RouterServicer_to_server, servicer, SERVICE)])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    pool.start()
    await server.start()
    await set_serving(health, [SERVICE], True)
    log.info("router on %s:%d with %d static workers", settings.host, port, len(settings.workers))
    try:
        await serve_until_signalled(server, health, [SERVICE], settings.grace_s)
    finally:
        await pool.close()


def main() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
