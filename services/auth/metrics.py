"""Auth metrics (prefix ``llmsvc_auth_``), served on ``LLMSVC_AUTH_METRICS_PORT``.

The cache hit ratio is ``rate(llmsvc_auth_key_cache_total{outcome="hit"}[5m]) /
rate(llmsvc_auth_key_cache_total[5m])``; counters, not a precomputed ratio, so
it aggregates across replicas.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("llmsvc_auth_decisions_total", "Admit decisions by outcome "
                    "(allowed, unauthenticated, forbidden, rate_limited, unavailable).", ["outcome"])
RATE_LIMITED = Counter("llmsvc_auth_rate_limited_total", "Requests refused with 429, by the limit that was hit "
                       "(rate_limit_requests, rate_limit_tokens, tokens_exceed_limit, quota_exceeded, "
                       "concurrency_limit).", ["outcome"])
ADMIT_LATENCY = Histogram("llmsvc_auth_admit_duration_seconds", "Time to authenticate and admit one request.",
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                   0.5, 1, 2.5))
KEY_CACHE = Counter("llmsvc_auth_key_cache_total", "Key look-ups by outcome: hit (fresh cache), miss (read from "
                    "the database), stale (database down, served from an older cache entry).", ["outcome"])
REDIS_ERRORS = Counter("llmsvc_auth_redis_errors_total", "Redis calls that failed or timed out.")
DB_ERRORS = Counter("llmsvc_auth_db_errors_total", "Database calls that failed or timed out.")
LIMITER_DEGRADED = Gauge("llmsvc_auth_limiter_degraded", "1 while Redis is unreachable: the policy label says "
                         "whether requests are refused (closed) or limited per replica (open).", ["policy"])
LIMITER_BACKEND = Gauge("llmsvc_auth_limiter_backend", "1 for the limiter backend this replica is configured "
                        "with (redis: shared; memory: this process only).", ["policy"])
USAGE_RECORDS = Counter("llmsvc_auth_usage_records_total", "Usage records by outcome: written (database), "
                        "spooled (buffered on local disk while the database is down), replayed (spool → "
                        "database), duplicate (already recorded).", ["outcome"])
USAGE_SPOOLED = Gauge("llmsvc_auth_usage_spool_records", "Usage records waiting in the local spool.")
SETTLES_PENDING = Gauge("llmsvc_auth_settles_pending", "Settlements Redis missed during an outage, waiting to be "
                        "replayed when it answers again (each frees a concurrency slot and gives back tokens).")
