"""Auth entry point: ``llmsvc auth`` or ``python -m services.auth.main``."""

from __future__ import annotations

import logging

from services.common.grpcutil import run_service, serve_until_signalled, set_serving
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server

from .config import AuthSettings
from .runtime import SERVICES, AuthRuntime

log = logging.getLogger(__name__)


async def serve(settings: AuthSettings) -> None:
    runtime = await AuthRuntime.start(settings)
    server, health = runtime.build_server()
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    await set_serving(health, SERVICES, True)
    log.info("auth on %s:%d", settings.host, port)
    try:
        await serve_until_signalled(server, health, SERVICES, settings.grace_s)
    finally:
        await runtime.close()


def main() -> None:
    settings = AuthSettings()
    setup_logging("auth", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.host)  # beside the service: loopback locally
    run_service(serve(settings))


if __name__ == "__main__":
    main()
