"""A steady Admit → ReportUsage load for outage tests, tagging each call with the phase it ran in."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc


@dataclass
class Call:
    phase: str
    """Phase when the call started; ``""`` when the phase changed while it ran (ambiguous, not asserted on)."""
    decision: int
    code: str
    reported: str = ""
    """ReportUsage's outcome (written, duplicate, spooled) for admitted calls."""
    tokens: int = 0
    backend: str = ""
    """Which limiter admitted it: ``r`` (Redis) or ``m`` (in-process)."""


@dataclass
class Load:
    stub: auth_pb2_grpc.AuthStub
    secret: str
    clients: int = 4
    reserve: int = 20
    phase: str = "before"
    calls: list[Call] = field(default_factory=list)
    _ids = itertools.count()

    async def _one(self) -> None:
        phase, n = self.phase, next(self._ids)
        rid = f"load-{id(self)}-{n}"
        r = await self.stub.Admit(pb.AdmitRequest(api_key=self.secret, request_id=rid, model="m",
                                                  reserve_tokens=self.reserve), timeout=10)
        call = Call(phase, r.decision, r.code)
        if r.decision == pb.DECISION_ALLOWED:
            prompt, completion = 3 + n % 5, n % 7
            rep = await self.stub.ReportUsage(pb.ReportUsageRequest(
                reservation_id=r.reservation_id, request_id=rid, key_id=r.key_id, model="m", prompt_tokens=prompt,
                completion_tokens=completion, status="ok", latency_s=0.01), timeout=10)
            call.reported, call.tokens = rep.outcome, prompt + completion
            call.backend = r.reservation_id.split(".", 1)[0]
        if self.phase != phase:
            call.phase = ""
        self.calls.append(call)

    async def run(self, stop: asyncio.Event) -> None:
        async def client() -> None:
            while not stop.is_set():
                await self._one()
                await asyncio.sleep(0.005)

        await asyncio.gather(*(client() for _ in range(self.clients)))

    async def until(self, phase: str, count: int, backend: str | None = None, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` calls (admitted by ``backend``, if given) completed entirely within ``phase``."""
        async def enough() -> None:
            while sum(c.phase == phase and backend in (None, c.backend) for c in self.calls) < count:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(enough(), timeout_s)

    def in_phase(self, phase: str) -> list[Call]:
        return [c for c in self.calls if c.phase == phase]
