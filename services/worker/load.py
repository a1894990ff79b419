"""Engine load as the router needs it, fed by a vLLM stat logger.

vLLM reports scheduler stats (running, waiting, KV-cache usage, prefix-cache
hits) after each engine step. A step only happens while there is work, so the
last report can be stale once the engine goes idle; :meth:`LoadTracker.snapshot`
therefore clamps the figures with the frontend's count of unfinished requests,
which drops as soon as a request finishes or is aborted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

RUNNING = Gauge("llmsvc_worker_running_requests", "Requests the engine is decoding.", ["model"])
WAITING = Gauge("llmsvc_worker_waiting_requests", "Requests queued in the engine.", ["model"])
KV_USAGE = Gauge("llmsvc_worker_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1).", ["model"])
PREFIX_QUERIES = Counter("llmsvc_worker_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
                         ["model"])
# vLLM's own time to first token: from the request's arrival at this worker's engine client to its first
# token. The gateway's llmsvc_time_to_first_token_seconds minus this is what the hops before the engine cost.
ENGINE_TTFT = Histogram("llmsvc_worker_engine_time_to_first_token_seconds",
                        "Time from a request's arrival at the worker's engine to its first token (vLLM's TTFT).",
                        ["model"], buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PREFIX_HITS = Counter("llmsvc_worker_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", ["model"])


@dataclass(slots=True)
class LoadSnapshot:
    running: int
    waiting: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float


class LoadTracker:
    """Thread-safe holder of the latest scheduler stats (vLLM may call from another thread)."""

    def __init__(self, model: str) -> None:
        self._model = model
        self.ttft = ENGINE_TTFT.labels(model)
        self._lock = threading.Lock()
        self._running = 0
        self._waiting = 0
        self._kv = 0.0
        self._queries = 0
        self._hits = 0

    def record(self, running: int, waiting: int, kv_usage: float, queries: int, hits: int) -> None:
        with self._lock:
            self._running, self._waiting, self._kv = running, waiting, kv_usage
            self._queries += queries
            self._hits += hits
        PREFIX_QUERIES.labels(self._model).inc(queries)
        PREFIX_HITS.labels(self._model).inc(hits)

    def snapshot(self, unfinished: int) -> LoadSnapshot:
        with self._lock:
            running = min(self._running, unfinished)
            waiting = max(0, min(self._waiting, unfinished - running))
            if unfinished and running + waiting < unfinished:
                # Admitted by the frontend but not yet seen by the scheduler: waiting.
                waiting = unfinished - running
            kv = self._kv if unfinished else 0.0
            rate = self._hits / self._queries if self._queries else 0.0
        RUNNING.labels(self._model).set(running)
        WAITING.labels(self._model).set(waiting)
        KV_USAGE.labels(self._model).set(kv)
        return LoadSnapshot(running, waiting, kv, rate)

    def stat_logger_factory(self):
        """A vLLM ``StatLoggerFactory`` that feeds this tracker."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        tracker = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
                if iteration_stats is not None:
                    for ttft in iteration_stats.time_to_first_tokens_iter:
                        tracker.ttft.observe(ttft)
                if scheduler_stats is None:
                    return
                pc = scheduler_stats.prefix_cache_stats
                tracker.record(
                    scheduler_stats.num_running_reqs,
                    scheduler_stats.num_waiting_reqs,
                    scheduler_stats.kv_cache_usage,
                    int(getattr(pc, "queries", 0)),
                    int(getattr(pc, "hits", 0)),
                )

            def log_engine_initialized(self) -> None:
                pass

        return _Logger
