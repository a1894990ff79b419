"""The usage ledger writer: database first, a local append-only spool while it is down.

A record that cannot be written is appended to ``<spool_dir>/usage-<replica>.jsonl``
and fsynced before ReportUsage returns, so it survives a crash of this process.
A background loop replays the spool once the database answers again. Replays
are idempotent (``reservation_id`` is unique), so a crash between writing a
batch and deleting it from the spool only writes nothing twice.

A replica holds an exclusive lock (``usage-<replica>.lock``) for as long as it runs. On a spool directory
that outlives its pods (the chart's volume), a replica that died with records spooled leaves its files
unlocked, and the next live replica adopts them: it takes the dead one's lock, replays its files and
removes them. So a spooled record is written once the database is back even when its replica never returns.
"""

from __future__ import annotations

import asyncio
import fcntl
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
        self.replica = replica
        self._held = self._lock_file(self.spool.with_suffix(".lock"), block=False)
        if self._held is None:
            log.warning("another live process holds the spool lock of replica %s in %s: give each replica its "
                        "own LLMSVC_AUTH_REPLICA_ID", replica, self.spool.parent)
        metrics.USAGE_SPOOLED.set(self._count_spooled())

    @staticmethod
    def _lock_file(path: Path, block: bool) -> int | None:
        """An open descriptor holding an exclusive lock on ``path``, or None when another process holds it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def close(self) -> None:
        if self._held is not None:
            os.close(self._held)  # releases the lock
            self._held = None

    def orphans(self) -> list[str]:
        """Replicas whose spool files lie here with no live owner holding their lock."""
        names = set()
        for path in self.spool.parent.glob("usage-*"):
            if path.suffix in (".jsonl", ".replaying"):
                replica = path.stem.removeprefix("usage-")
                if replica != self.replica:
                    names.add(replica)
        return sorted(names)

    async def adopt_orphans(self) -> int:
        """Replay the spools of replicas that are gone; returns the records replayed."""
        total = 0
        for replica in self.orphans():
            base = self.spool.parent / f"usage-{replica}"
            fd = self._lock_file(base.with_suffix(".lock"), block=False)
            if fd is None:
                continue  # alive: it replays its own
            try:
                rows = [r for p in (base.with_suffix(".replaying"), base.with_suffix(".jsonl")) if p.exists()
                        for r in self._read(p)]
                written = 0
                for i in range(0, len(rows), _BATCH):
                    written += len(await self.store.insert_usage(rows[i:i + _BATCH]))
                for p in (base.with_suffix(".replaying"), base.with_suffix(".jsonl")):
                    p.unlink(missing_ok=True)
                base.with_suffix(".lock").unlink(missing_ok=True)
                metrics.USAGE_RECORDS.labels("replayed").inc(written)
                metrics.USAGE_RECORDS.labels("duplicate").inc(len(rows) - written)
                log.info("adopted the spool of replica %s: replayed %d usage records (%d already present)",
                         replica, len(rows), len(rows) - written)
                total += len(rows)
            finally:
                os.close(fd)
        return total

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
        """Replay whenever there is something spooled, ours or a gone replica's; until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.spool.exists() or self.replaying.exists():
                    await self.replay()
                if time.monotonic() >= self._down_until:
                    await self.adopt_orphans()
            except StoreUnavailable as exc:
                log.debug("spool replay deferred: %s", exc)
