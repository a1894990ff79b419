"""Pure-ASGI middleware: request ids and per-request metrics.

Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched
and the latency of a stream is measured until its last byte.
"""

from __future__ import annotations

import re
import time
import uuid

from services.common.logging import request_id_var

from . import metrics

_FORM = b"application/x-www-form-urlencoded"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The scope key of the ``send`` this middleware was given, outside every wrapper of ``send`` inside it (ours,
# FastAPI's and Starlette's exception handling). Those act on the response's start only, so a streamed
# response may write the events of its body straight to it (see ``serving._SSEResponse``).
BODY_SEND = "llmsvc.body_send"


def metric_model(scope, model: str) -> str:
    """The ``model`` label of a request's metrics: a model the router lists, or ``other`` for any other name
    (a client can send any string, even without a valid key; each would otherwise become a new series)."""
    if not model:
        return ""
    upstreams = getattr(getattr(scope.get("app"), "state", None), "upstreams", None)
    return model if upstreams is not None and model in upstreams.known_models else "other"


class RequestContextMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if scope.get("method") == "POST" and headers.get(b"content-type", b"").startswith(_FORM):
            # curl -d sends form encoding by default; our POST bodies are always JSON.
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                     + [(b"content-type", b"application/json")]}
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _VALID_ID.match(incoming) else f"req-{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        scope[BODY_SEND] = send
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        path = scope.get("path", "")

        async def send_wrapper(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        tracked = path.startswith("/v1/")
        if tracked:
            metrics.IN_FLIGHT.labels("gateway").inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if tracked:
                route = scope.get("route")
                label = getattr(route, "path", path) if route is not None else "unmatched"
                model = metric_model(scope, scope["state"].get("model", ""))
                metrics.IN_FLIGHT.labels("gateway").dec()
                metrics.REQUESTS.labels("gateway", label, model, str(status)).inc()
                metrics.LATENCY.labels("gateway", label, model).observe(time.perf_counter() - start)
            request_id_var.reset(token)
