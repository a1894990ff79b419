"""Wakes event streams when the supervisor stores new events for a job (in this process)."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, job_id: str) -> None:
        for ev in self._events.get(job_id, ()):
            ev.set()

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Return on the next notify for ``job_id`` or after ``timeout_s`` (streams also poll the database,
        so events written by another replica are seen too)."""
        ev = asyncio.Event()
        self._events[job_id].add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self._events[job_id].discard(ev)
            if not self._events[job_id]:
                self._events.pop(job_id, None)
