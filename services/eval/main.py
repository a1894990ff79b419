"""Eval entry point: ``llmsvc eval-service`` or ``python -m services.eval.main``."""

from __future__ import annotations

import asyncio
import logging

from services.common.db.engine import make_engine, session_factory
from services.common.grpcutil import build_server, serve_until_signalled, set_serving
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server
from services.common.pb import eval_pb2_grpc
from services.lifecycle.gate import Requirement
from services.lifecycle.promotion import Promoter

from .client import ModelClient
from .config import EvalSettings
from .runner import RunManager
from .servicer import EvalServicer

log = logging.getLogger(__name__)
SERVICE = "llmsvc.v1.Eval"


def build_rollout(settings: EvalSettings, client: ModelClient):
    if settings.rollout == "kubernetes":
        from services.lifecycle.kubernetes import KubernetesRollout

        return KubernetesRollout(settings.k8s_namespace, settings.k8s_deployment)
    if settings.rollout == "embedded":
        from services.lifecycle.rollout import EmbeddedRollout

        return EmbeddedRollout(client.router, timeout_s=settings.serve_timeout_s)
    if settings.rollout == "ondemand":
        from services.lifecycle.rollout import OnDemandRollout

        return OnDemandRollout(client.router, timeout_s=settings.serve_timeout_s)
    from services.lifecycle.rollout import RegistryOnlyRollout

    return RegistryOnlyRollout()


async def serve(settings: EvalSettings) -> None:
    requirements = [Requirement.parse(r) for r in settings.gate]  # a bad gate config fails at start-up
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    client = ModelClient(settings.router_addr, settings.request_timeout_s)
    runs = RunManager(settings, sessions, client)
    orphans = await runs.store.fail_orphans()
    if orphans:
        log.warning("marked %d runs of a previous process as failed", orphans)
    servicer = EvalServicer(runs, Promoter(sessions, runs, requirements, build_rollout(settings, client)))
    server, health = build_server("eval", [(eval_pb2_grpc.add_EvalServicer_to_server, servicer, SERVICE)])
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    await set_serving(health, [SERVICE], True)
    log.info("eval on %s:%d (router %s)", settings.host, port, settings.router_addr)
    try:
        await serve_until_signalled(server, health, [SERVICE], settings.grace_s)
    finally:
        await runs.close()
        await client.close()
        await engine.dispose()


def main() -> None:
    settings = EvalSettings()
    setup_logging("eval", settings.log_level, settings.log_format)
    start_metrics_server(settings.metrics_port, settings.host)  # beside the service: loopback locally
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
