"""The FastAPI application: routers, middleware and error handlers."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.grpcutil import insecure_channel

from .admission import RateLimitHeadersMiddleware
from .config import GatewaySettings
from .errors import install_handlers
from .limits import BodyLimitMiddleware
from .middleware import RequestContextMiddleware
from .routes import (
    admin,
    batches,
    embeddings,
    evals,
    files,
    fine_tuning,
    generate,
    health,
    models,
    promotions,
    responses,
    tokenizer,
)
from .upstream import Upstreams


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.upstreams = Upstreams.connect(settings.router_addr, settings.auth_addr, settings.multiplex,
                                                journal_dir=settings.usage_journal_dir or None)
        app.state.upstreams.usage_reports.start()
        app.state.upstreams.extra["eval"] = insecure_channel(settings.eval_addr)
        app.state.upstreams.extra["trainer"] = insecure_channel(settings.trainer_addr)
        yield
        await app.state.upstreams.close()

    app = FastAPI(title="llmsvc", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_handlers(app)
    for r in (generate.router, models.router, health.router, admin.router, evals.router, promotions.router,
              tokenizer.router, responses.router, embeddings.router):
        app.include_router(r)
    app.include_router(fine_tuning.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes, idle_timeout_s=settings.body_idle_timeout_s)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(RequestContextMiddleware)
    return app
