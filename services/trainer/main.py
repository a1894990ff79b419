"""Trainer entry point: ``llmsvc trainer`` or ``python -m services.trainer.main``."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server

from .config import TrainerSettings
from .service import start

log = logging.getLogger(__name__)


async def serve(settings: TrainerSettings) -> None:
    service = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: local jobs checkpoint and are queued to resume on the next start")
    await service.stop(settings.grace_s)


def main() -> None:
    settings = TrainerSettings()
    setup_logging("trainer", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.host)  # beside the service: loopback locally
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
