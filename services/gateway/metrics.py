"""Gateway metrics (prefix ``llmsvc_``; labels service/route/model/status)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("llmsvc_requests_total", "HTTP requests by route, model and status code.",
                   ["service", "route", "model", "status"])
LATENCY = Histogram("llmsvc_request_duration_seconds", "End-to-end HTTP request latency (streams: until [DONE]).",
                    ["service", "route", "model"], buckets=_LATENCY_BUCKETS)
TTFT = Histogram("llmsvc_time_to_first_token_seconds", "Time from request to the first generated token.",
                 ["model"], buckets=_LATENCY_BUCKETS)
ITL = Histogram("llmsvc_inter_token_latency_seconds", "Mean time between tokens of one request.",
                ["model"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1))
TOKENS = Counter("llmsvc_tokens_total", "Tokens processed, by model and kind (prompt or completion).",
                 ["model", "kind"])
IN_FLIGHT = Gauge("llmsvc_requests_in_flight", "API requests being served.", ["service"])
