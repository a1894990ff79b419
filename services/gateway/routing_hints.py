"""Routing hints a client may send: ``x-session-id`` (session affinity) and ``x-priority``.

The router reads them from the GenerateRequest: ``session_id`` for the
``session`` policy, ``priority`` for its admission queue (and vLLM's scheduler).
A key with the ``batch`` scope is always batch, whatever it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from services.common.pb import inference_pb2 as pb

from .errors import APIError

# vLLM semantics: lower is more urgent.
PRIORITIES = {"interactive": 0, "batch": 1}
_MAX_SESSION_ID = 256


@dataclass(slots=True)
class RoutingHints:
    session_id: str
    priority: int

    @classmethod
    def from_headers(cls, request: Request) -> RoutingHints:
        """Read and validate the headers (a 400 before admission, so nothing is reserved)."""
        raw = request.headers.get("x-priority", "").strip().lower()
        if raw and raw not in PRIORITIES:
            raise APIError(400, "The x-priority header must be 'interactive' or 'batch'.", param="x-priority")
        session = request.headers.get("x-session-id", "")
        if len(session) > _MAX_SESSION_ID:
            raise APIError(400, f"The x-session-id header may be at most {_MAX_SESSION_ID} characters.",
                           param="x-session-id")
        return cls(session, PRIORITIES.get(raw, 0))

    def apply(self, requests: list[pb.GenerateRequest], scopes: list[str]) -> None:
        priority = max(self.priority, PRIORITIES["batch"] if "batch" in scopes else 0)
        for r in requests:
            if self.session_id:  # the header wins over the body's prompt_cache_key
                r.session_id = self.session_id
            r.priority = priority
