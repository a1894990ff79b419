"""Gateway entry point: ``llmsvc gateway`` or ``python -m services.gateway.main``."""

from __future__ import annotations

import uvicorn

from services.common.logging import setup_logging

from .app import create_app
from .config import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level, settings.log_format)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=int(settings.grace_s))


if __name__ == "__main__":
    main()
