"""Builds the auth service's parts from its settings, runs its background loops, and closes it.

Used by ``main.serve`` and by tests that run auth servers in-process on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.db.engine import default_database_url, make_engine
from services.common.grpcutil import build_server
from services.common.pb import auth_pb2_grpc, batches_pb2_grpc, responses_pb2_grpc

from . import keys
from .admin import ADMIN_SERVICE, AdminAuthInterceptor, AdminServicer
from .batch_results import BATCH_RESULTS_SERVICE, BatchResultsServicer
from .cache import KeyCache
from .config import AuthSettings
from .gate import Gate
from .guard import GuardedLimiter
from .invalidation import Invalidation
from .limiter import Limits, MemoryLimiter, RedisLimiter, WindowConfig
from .responses import RESPONSES_SERVICE, ResponseStoreServicer
from .servicer import AuthServicer
from .store import Store, StoreUnavailable
from .usage import UsageRecorder

log = logging.getLogger(__name__)
AUTH_SERVICE = "llmsvc.v1.Auth"
SERVICES = [AUTH_SERVICE, ADMIN_SERVICE, RESPONSES_SERVICE]


@dataclass
class AuthRuntime:
    settings: AuthSettings
    store: Store
    gate: Gate
    invalidation: Invalidation
    redis: aioredis.Redis | None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: AuthSettings) -> AuthRuntime:
        url = settings.database_url or default_database_url()
        store = Store(make_engine(url), timeout_s=settings.db_timeout_s)
        window = WindowConfig(settings.window_s, settings.concurrency_lease_s)
        client = shared = None
        if settings.redis_url:
            # One immediate retry covers a pooled connection that died while idle; anything longer is an
            # outage, which the policy handles (redis-py's default is 10 retries with backoff).
            client = aioredis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s,
                                       socket_connect_timeout=settings.redis_timeout_s, health_check_interval=5,
                                       retry=Retry(NoBackoff(), 1))
            shared = RedisLimiter(client, settings.redis_prefix, window, settings.redis_timeout_s)
            log.info("limits are shared in Redis; outage policy: fail-%s", settings.redis_failure_policy)
        else:
            log.warning("no LLMSVC_REDIS_URL: limits are enforced in this process only, exact with ONE auth replica")
        limiter = GuardedLimiter(shared, MemoryLimiter(window), settings.redis_failure_policy, settings.redis_retry_s)
        cache = KeyCache(store, ttl_s=settings.key_cache_ttl_s, stale_s=settings.key_cache_stale_s,
                         max_unknown=settings.key_cache_max_unknown, retry_s=settings.db_retry_s)
        recorder = UsageRecorder(store, settings.spool_dir, settings.replica, retry_s=settings.db_retry_s)
        invalidation = Invalidation(cache, _pubsub_client(settings), settings.redis_prefix + "revoked")
        rt = cls(settings, store, Gate(cache, limiter, recorder), invalidation, client)
        await rt._bootstrap()
        rt.tasks = [asyncio.create_task(c) for c in (recorder.run(), invalidation.run(), rt._maintain())]
        return rt

    async def _bootstrap(self, attempts: int = 30) -> None:
        """Fail fast without tables; wait out a database that is still starting."""
        secret = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        if secret and not keys.well_formed(secret):
            # It could never authenticate: say so now rather than refuse every request later.
            raise SystemExit(f"auth: the bootstrap API key must be {keys.MIN_LEN}-{keys.MAX_LEN} printable "
                             "ASCII characters without spaces")
        limits = Limits(self.settings.bootstrap_rpm, self.settings.bootstrap_tpm)
        for attempt in range(attempts):
            try:
                if secret:
                    await self.store.upsert_bootstrap(secret, limits)
                else:
                    await self.store.key_by_id("bootstrap")
                return
            except StoreUnavailable as exc:
                if "api_keys" in str(exc) and ("no such table" in str(exc) or "does not exist" in str(exc)):
                    raise SystemExit("auth: the database has no api_keys table; run `llmsvc db upgrade`") from None
                log.warning("database not ready (attempt %d/%d): %s", attempt + 1, attempts, exc)
                await asyncio.sleep(1.0)
        raise SystemExit("auth: the database did not answer at start-up")

    async def _maintain(self) -> None:
        """Every minute: flush ``last_used_at``; every retention interval: purge old usage rows."""
        since_purge = self.settings.retention_interval_s  # purge once soon after start
        while True:
            await asyncio.sleep(60.0)
            used = self.gate.take_used()
            with contextlib.suppress(StoreUnavailable):
                if used:
                    await self.store.touch(used)
            since_purge += 60.0
            if since_purge >= self.settings.retention_interval_s:
                since_purge = 0.0
                with contextlib.suppress(StoreUnavailable):
                    n = await self.store.purge_usage(timedelta(days=self.settings.usage_retention_days))
                    log.info("retention: deleted %d usage rows older than %d days", n,
                             self.settings.usage_retention_days)

    def build_server(self):
        """The gRPC server (Auth + AuthAdmin + ResponseStore + BatchResults + health + reflection) and its health
        servicer."""
        return build_server(
            "auth",
            [(auth_pb2_grpc.add_AuthServicer_to_server, AuthServicer(self.gate), AUTH_SERVICE),
             (auth_pb2_grpc.add_AuthAdminServicer_to_server, AdminServicer(self.store, self.invalidation),
              ADMIN_SERVICE),
             (responses_pb2_grpc.add_ResponseStoreServicer_to_server,
              ResponseStoreServicer(self.store.engine, self.settings.db_timeout_s), RESPONSES_SERVICE),
             (batches_pb2_grpc.add_BatchResultsServicer_to_server,
              BatchResultsServicer(self.store, self.gate, self.settings.db_timeout_s), BATCH_RESULTS_SERVICE)],
            interceptors=[AdminAuthInterceptor(self.gate)],
        )

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.gate.recorder.close()
        await self.gate.limiter.close()
        if self.invalidation.client is not None:
            await self.invalidation.client.aclose()
        await self.store.engine.dispose()


def _pubsub_client(settings: AuthSettings) -> aioredis.Redis | None:
    # Its own client: a subscription holds a connection and must not inherit the limiter's short timeouts.
    if not settings.redis_url:
        return None
    return aioredis.from_url(settings.redis_url, socket_connect_timeout=2.0, health_check_interval=5)
