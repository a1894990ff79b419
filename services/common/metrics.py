"""Prometheus helpers: every gRPC service serves ``/metrics`` on its own HTTP port."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve the default registry on ``host:port``; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
