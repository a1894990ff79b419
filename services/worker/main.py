"""Worker entry point: ``llmsvc worker`` or ``python -m services.worker.main``."""

from __future__ import annotations

import asyncio
import logging

from services.common.grpcutil import build_server, run_service, serve_until_signalled, set_serving
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server
from services.common.pb import inference_pb2_grpc as pb_grpc

from .config import WorkerSettings
from .engine import EngineHost
from .priority import lower_cpu_priority
from .servicer import InferenceServicer

log = logging.getLogger(__name__)
SERVICE = "llmsvc.v1.Inference"


async def serve(settings: WorkerSettings) -> None:
    host = EngineHost(settings)
    servicer = InferenceServicer(host)
    server, health = build_server("worker", [(pb_grpc.add_InferenceServicer_to_server, servicer, SERVICE)])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await set_serving(health, [SERVICE], False)
    # Listen before the engine is up so health checks see NOT_SERVING, not a refused port.
    await server.start()
    log.info("worker listening on %s:%d, starting engine for %s", settings.host, port, settings.model)
    lower_cpu_priority(settings.cpu_nice)  # before the engine processes start: they inherit it
    await asyncio.to_thread(host.start)
    await set_serving(health, [SERVICE], True)
    log.info("worker serving %s", host.card.name)

    async def drain() -> None:
        # Refuse new streams (the router retries them elsewhere) but keep the port open until the
        # open ones finish: stopping the gRPC server at once races its GOAWAY with streams in flight.
        servicer.draining = True
        deadline = asyncio.get_running_loop().time() + settings.grace_s
        while servicer.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        log.info("drained: %d streams still open", servicer.active)

    try:
        await serve_until_signalled(server, health, [SERVICE], settings.grace_s, on_drain=drain)
    finally:
        host.shutdown()


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.host)  # beside the service: loopback locally
    run_service(serve(settings))


if __name__ == "__main__":
    main()
