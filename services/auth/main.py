"""Auth entry point: ``llmsvc auth`` or ``python -m services.auth.main``."""

from __future__ import annotations

import asyncio
import logging

from services.common.grpcutil import build_server, serve_until_signalled, set_serving
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server
from services.common.pb import auth_pb2_grpc

from .config import AuthSettings
from .servicer import AuthServicer

log = logging.getLogger(__name__)
SERVICE = "llmsvc.v1.Auth"


async def serve(settings: AuthSettings) -> None:
    servicer = AuthServicer(settings.api_key.get_secret_value())
    server, health = build_server("auth", [(auth_pb2_grpc.add_AuthServicer_to_server, servicer, SERVICE)])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    await set_serving(health, [SERVICE], True)
    log.info("auth on %s:%d", settings.host, port)
    await serve_until_signalled(server, health, [SERVICE], settings.grace_s)


def main() -> None:
    settings = AuthSettings()
    setup_logging("auth", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
