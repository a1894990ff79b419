"""The usage ledger writer: database first, a local append-only spool while it is down.

A record that cannot be written is appended to ``<spool_dir>/usage-<replica>.jsonl``
and fsynced before ReportUsage returns, so it survives a crash of this process.
A background loop replays the spool once the database answers again. Replays
are idempotent (``reservation_id`` is unique), so a crash between writing a
batch and deleting it from the spool only writes nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from . import metrics
from .store import Store, StoreUnavailable, UsageRow

log = logging.getLogger(__name__)
_BATCH = 500


def _encode(row: UsageRow) -> str:
    doc = row.as_dict()
    doc["created_at"] = row.created_at.isoformat()
    return json.dumps(doc, separators=(",", ":")) + "\n"


def _decode(line: str) -> UsageRow:
    doc = json.loads(line)
    doc["created_at"] = datetime.fromisoformat(doc["created_at"])
    return UsageRow(**doc)


class UsageRecorder:
    def __init__(self, store: Store, spool_dir: Path, replica: str, *, retry_s: float = 1.0) -> None:
        self.store = store
        self.spool = Path(spool_dir) / f"usage-{replica}.jsonl"
        self.replaying = self.spool.with_suffix(".replaying")
        self.retry_s = retry_s
        self._down_until = 0.0
        self._lock = asyncio.Lock()
        self._queue: list[tuple[UsageRow, asyncio.Future]] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        metrics.USAGE_SPOOLED.set(self._count_spooled())

    def _count_spooled(self) -> int:
        return sum(sum(1 for _ in open(p, encoding="utf-8")) for p in (self.spool, self.replaying) if p.exists())

    async def record(self, row: UsageRow) -> str:
        """Write one record durably; returns ``written``, ``duplicate`` or ``spooled`` once it is.

        Group commit: records that arrive while a write is in flight go in the
        next write together, one INSERT and one commit (or one fsync) per batch.
        Nobody waits for a batch to fill; a lone record is written at once.
        """
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((row, fut))
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())  # keep a reference
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
                try:
                    outcomes = await self._write([row for row, _ in batch])
                except (Exception, asyncio.CancelledError) as exc:  # e.g. a full disk: the callers see the error
                    for _, fut in batch:
                        fut.done() or fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, fut), outcome in zip(batch, outcomes, strict=True):
                    fut.done() or fut.set_result(outcome)
        finally:
            self._flushing = False

    async def _write(self, rows: list[UsageRow]) -> list[str]:
        if time.monotonic() >= self._down_until:
            try:
                inserted = await self.store.insert_usage(rows)
                outcomes = ["written" if r.reservation_id in inserted else "duplicate" for r in rows]
                seen: set[str] = set()
                for i, r in enumerate(rows):  # the same reservation twice in one batch: the second is a duplicate
                    if r.reservation_id in seen:
                        outcomes[i] = "duplicate"
                    seen.add(r.reservation_id)
                for outcome in outcomes:
                    metrics.USAGE_RECORDS.labels(outcome).inc()
                return outcomes
            except StoreUnavailable as exc:
                metrics.DB_ERRORS.inc()
                self._down_until = time.monotonic() + self.retry_s
                log.warning("database unavailable, spooling usage to %s: %s", self.spool, exc)
        await self._append(rows)
        metrics.USAGE_RECORDS.labels("spooled").inc(len(rows))
        metrics.USAGE_SPOOLED.inc(len(rows))
        return ["spooled"] * len(rows)

    async def _append(self, rows: list[UsageRow]) -> None:
        line = "".join(_encode(row) for row in rows).encode()

        def write() -> None:
            fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

        async with self._lock:
            await asyncio.to_thread(write)

    async def replay(self) -> int:
        """Move the spool aside and write it to the database; returns records replayed.

        On failure the moved-aside file stays and is retried next time; new
        records keep going to a fresh spool meanwhile.
        """
        async with self._lock:
            if not self.replaying.exists():
                if not self.spool.exists():
                    return 0
                os.replace(self.spool, self.replaying)
        rows = self._read(self.replaying)
        written = 0
        try:
            for i in range(0, len(rows), _BATCH):
                written += len(await self.store.insert_usage(rows[i:i + _BATCH]))
        except StoreUnavailable:
            metrics.DB_ERRORS.inc()
            self._down_until = time.monotonic() + self.retry_s
            raise
        self.replaying.unlink()
        self._down_until = 0.0
        metrics.USAGE_RECORDS.labels("replayed").inc(written)
        metrics.USAGE_RECORDS.labels("duplicate").inc(len(rows) - written)
        metrics.USAGE_SPOOLED.set(self._count_spooled())
        log.info("replayed %d spooled usage records (%d already present)", len(rows), len(rows) - written)
        return len(rows)

    @staticmethod
    def _read(path: Path) -> list[UsageRow]:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(_decode(line))
            except (ValueError, TypeError, KeyError):
                # Only a torn last line (a crash mid-append) can be malformed; keep the rest.
                log.error("skipping unreadable spool line %d of %s", n, path)
        return rows

    async def run(self, interval_s: float = 1.0) -> None:
        """Replay whenever there is something spooled; until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self.spool.exists() or self.replaying.exists():
                try:
                    await self.replay()
                except StoreUnavailable as exc:
                    log.debug("spool replay deferred: %s", exc)
