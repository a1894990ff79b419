"""Runs batches: each line goes through the gateway, at batch priority, as the key that made the batch.

The runner is a client of our own API. Each line is POSTed to the batch's endpoint on the gateway with the
batch's owner and key in a signed identity (``services.common.identity``) instead of an API key, and with
``x-priority: batch``. So a line is validated, admitted, rate limited, routed and charged exactly as the
key's own request would be, and the router's admission queue and vLLM's scheduler put interactive traffic
first.

Exactly once: a line is marked done, with its answer, in the same transaction that counts it in its batch,
and only while it is not done. The gateway that makes a line's answer records it (``BatchResults`` in auth)
before it sends it back, so it is kept even if this runner dies the moment after. A runner that stops
(cancel, a lost lease, a crash) closes its connections; the gateway aborts the requests still in flight (a
non-streamed request is cancelled when its client leaves), and nothing of theirs is recorded. Whichever
runner goes on sends only the lines not done. Only the lease holder (the trainer instance that supervises
jobs) runs batches.

Retries: 429 (the key's limits, the router's queue), 503 and 504 and a gateway that cannot be reached are
waited out (``retry-after`` when given) until the batch expires; 500 and 502 (a worker that died mid-request)
are sent again twice; other answers are the line's result.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Callable
from contextlib import suppress

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db.base import utcnow
from services.common.db.batch_tables import RUNNABLE_STATUSES, TERMINAL_STATUSES, Batch, BatchLine, record_line
from services.common.identity import BATCH_LINE_KEY, IDENTITY_KEY, SIGNATURE_KEY, Identity, IdentityCodec

from ..files import FileStore

log = logging.getLogger(__name__)

LINES = Counter("llmsvc_batch_lines_total", "Batch lines that ended, by outcome (ok: a 2xx answer; error: "
                "another answer; retried: attempts waited out and sent again).", ["outcome"])
RUNNING = Gauge("llmsvc_batches_running", "Batches this trainer instance is running now.")
RETRYABLE = {429, 503, 504}
"""Answers that say "not now": waited out and sent again until the batch expires."""
SERVER_ERRORS = {500, 502}
"""Answers that may be transient (a worker that died mid-request): sent again up to SERVER_ERROR_TRIES times."""
SERVER_ERROR_TRIES = 3
MAX_BACKOFF_S = 10.0
_UNRUN = {"expired": ("batch_expired", "This request could not be executed before the completion window expired."),
          "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled.")}


def line_request_id(batch_id: str, line: int) -> str:
    """The id of a line's request: in its output line and its usage record, the same on every attempt."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def file_id_for(batch_id: str, kind: str) -> str:
    """The output (or error) file's id, fixed per batch, so a finalization that is redone writes the same."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


def usage_of(endpoint: str, body: dict) -> tuple[int, int]:
    """(input, output) tokens a response body reports."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    if endpoint == "/v1/responses":
        return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class BatchRunner:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], files: FileStore, *, gateway_url: str,
                 leader: Callable[[], bool], concurrency: int = 8, request_timeout_s: float = 600.0,
                 poll_interval_s: float = 0.5, codec: IdentityCodec | None = None) -> None:
        self.sessions, self.files, self.leader = sessions, files, leader
        self.gateway_url = gateway_url.rstrip("/")
        self.concurrency, self.request_timeout_s, self.poll_s = concurrency, request_timeout_s, poll_interval_s
        self.codec = codec or IdentityCodec()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._batches: dict[str, asyncio.Task] = {}
        self._sending: set[tuple[str, int]] = set()
        """(batch, line) of the requests in flight, of every batch: at most ``concurrency``. A line is in it from
        the moment its task is made (not when the task first runs) until its answer arrives."""
        self._claimed = 0
        """Slots a batch has claimed while it reads which lines to fill them with: taken before that read's
        ``await`` and handed back after, so batches reading at the same time cannot fill the same slots."""
        self._client: httpx.AsyncClient | None = None

    @property
    def unavailable(self) -> str:
        """Why this deployment cannot run batches ('' when it can)."""
        if not self.gateway_url:
            return "the trainer has no gateway to send a batch's requests to (set LLMSVC_TRAINER_GATEWAY_URL)"
        if not self.codec.enabled:
            return ("the deployment has no internal secret (LLMSVC_INTERNAL_SECRET), so a batch's requests "
                    "cannot be sent as the key that made it")
        return ""

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.unavailable:
            log.info("batches will not run: %s", self.unavailable)
            return
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.request_timeout_s, connect=5.0),
                                         limits=httpx.Limits(max_connections=self.concurrency * 4))
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-runner")

    async def close(self) -> None:
        """Stop every batch; their requests in flight are closed (the gateway aborts them) and run again by
        whichever instance runs the batches next."""
        tasks = [t for t in (self._task, *self._batches.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                if self.leader():
                    async with self.sessions() as session:
                        ids = list(await session.scalars(select(Batch.id).where(
                            Batch.status.in_(RUNNABLE_STATUSES)).order_by(Batch.created_at)))
                    for batch_id in ids:
                        if batch_id not in self._batches:
                            self._batches[batch_id] = asyncio.get_running_loop().create_task(
                                self._run_batch(batch_id), name=f"batch-{batch_id}")
                            RUNNING.set(len(self._batches))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch runner tick failed; retrying")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def _run_batch(self, batch_id: str) -> None:
        """Keep the batch's lines in flight (up to ``concurrency`` in flight across every batch, shared)
        until none is left, then end the batch. A slot is free as soon as a line's answer arrives (its result
        is recorded while the next line is sent); the batch's status (cancel, expiry, the lease) is read
        every poll interval."""
        tasks: dict[int, asyncio.Task] = {}
        progress = asyncio.Event()
        exhausted, next_check = False, 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                if loop.time() >= next_check:
                    async with self.sessions() as session:
                        batch = await session.get(Batch, batch_id)
                    if batch is None or batch.status in TERMINAL_STATUSES or not self.leader():
                        return
                    if batch.status == "cancelling" or utcnow() >= batch.expires_at:
                        await self._cancel(batch_id, tasks)
                        await self._finalize(batch_id, "cancelled" if batch.status == "cancelling" else "expired")
                        return
                    next_check = loop.time() + self.poll_s
                for line, task in list(tasks.items()):
                    if task.done():
                        del tasks[line]
                        if not task.cancelled() and (exc := task.exception()) is not None:
                            exhausted = False  # its line is not done: it is sent again
                            log.error("batch %s line %d failed in the runner: %r", batch_id, line, exc)
                if (free := self.concurrency - len(self._sending) - self._claimed) > 0 and not exhausted:
                    self._claimed += free
                    try:
                        async with self.sessions() as session:
                            rows = list(await session.scalars(select(BatchLine).where(
                                BatchLine.batch_id == batch_id, BatchLine.done.is_(False),
                                BatchLine.line.not_in(list(tasks) or [-1])).order_by(BatchLine.line).limit(free)))
                    finally:
                        self._claimed -= free
                    exhausted = len(rows) < free  # every line not done is in flight now
                    for row in rows:  # no await from the claim to here: the slots pass to the lines whole
                        self._sending.add((batch_id, row.line))
                        tasks[row.line] = loop.create_task(self._run_line(batch, row, progress))
                if exhausted and not tasks:
                    async with self.sessions() as session:
                        pending = await session.scalar(select(func.count()).select_from(BatchLine).where(
                            BatchLine.batch_id == batch_id, BatchLine.done.is_(False)))
                    if not pending:
                        await self._finalize(batch_id, "completed")
                        return
                    exhausted = False
                with suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), self.poll_s)
                progress.clear()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s: the runner failed; it will be picked up again", batch_id)
        finally:
            await self._cancel(batch_id, tasks)
            self._batches.pop(batch_id, None)
            RUNNING.set(len(self._batches))

    async def _cancel(self, batch_id: str, tasks: dict[int, asyncio.Task]) -> None:
        """Cancel the batch's lines in flight and free their slots (a task cancelled before it first ran never
        reached ``_run_line``'s ``finally``)."""
        lines = list(tasks)
        await _cancel(tasks)
        for line in lines:
            self._sending.discard((batch_id, line))

    def _headers(self, batch: Batch, line: int) -> dict[str, str]:
        md = dict(self.codec.metadata(Identity(owner=batch.owner, key_id=batch.key_id)))
        return {IDENTITY_KEY: md[IDENTITY_KEY], SIGNATURE_KEY: md[SIGNATURE_KEY], "x-priority": "batch",
                "x-request-id": line_request_id(batch.id, line), BATCH_LINE_KEY: f"{batch.id}:{line}",
                "content-type": "application/json"}

    async def _run_line(self, batch: Batch, row: BatchLine, progress: asyncio.Event) -> None:
        """Send the line (its slot, in ``_sending``, was taken when its task was made) and record its answer;
        the slot is free as soon as the answer arrives."""
        try:
            resp = await self._send(batch, row)
        finally:
            self._sending.discard((batch.id, row.line))
            progress.set()
        if resp is None:
            LINES.labels("ok").inc()  # an earlier attempt's answer was recorded by its gateway
        elif resp.headers.get("x-llmsvc-batch-recorded") == "1":
            LINES.labels("ok").inc()  # the gateway recorded it before answering
        else:  # an answer the gateway made without running the line: an error, recorded here
            try:
                body = resp.json()
            except ValueError:
                body = {"error": {"message": resp.text[:2000], "type": "server_error", "param": None, "code": None}}
            await self._record(batch, row.line, resp.status_code,
                               resp.headers.get("x-request-id") or line_request_id(batch.id, row.line), body)
        progress.set()

    async def _send(self, batch: Batch, row: BatchLine) -> httpx.Response | None:
        """The line's answer, once it is one to keep (retryable answers are waited out and sent again); None
        when an earlier attempt turns out to have been answered and recorded (its gateway died, or could not
        say so, after recording it): the line is not sent again."""
        url = self.gateway_url + batch.endpoint
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1 and await self._done(batch.id, row.line):
                return None
            try:
                # Signed afresh each attempt: the identity expires (an hour) and a batch may wait longer.
                resp = await self._client.post(url, content=row.body.encode(), headers=self._headers(batch, row.line))
            except httpx.HTTPError as exc:
                wait = min(MAX_BACKOFF_S, 0.5 * 2 ** min(attempt, 5))
                log.info("batch %s line %d: gateway unreachable (%s); retrying in %.1fs", batch.id, row.line,
                         type(exc).__name__, wait)
                LINES.labels("retried").inc()
                await asyncio.sleep(wait * (0.5 + random.random() / 2))
                continue
            if (resp.status_code in RETRYABLE and not _final_refusal(resp)) or \
                    (resp.status_code in SERVER_ERRORS and attempt < SERVER_ERROR_TRIES):
                LINES.labels("retried").inc()
                await asyncio.sleep(_retry_after(resp, attempt))
                continue
            return resp

    async def _done(self, batch_id: str, line: int) -> bool:
        async with self.sessions() as session:
            return bool(await session.scalar(select(BatchLine.done).where(BatchLine.batch_id == batch_id,
                                                                          BatchLine.line == line)))

    async def _record(self, batch: Batch, line: int, status: int, request_id: str, body: dict) -> None:
        """Record the answer the runner received; a no-op when the gateway that made it recorded it first."""
        tokens_in, tokens_out = usage_of(batch.endpoint, body)
        async with self.sessions() as session, session.begin():
            await record_line(session, batch.id, line, status, request_id, json.dumps(body, separators=(",", ":")),
                              tokens_in, tokens_out)
        LINES.labels("ok" if 200 <= status < 300 else "error").inc()

    async def _finalize(self, batch_id: str, outcome: str) -> None:
        """Write the output and error files and end the batch, in one transaction with the files' rows. A
        finalization cut short is redone from the start: the files' ids are fixed per batch."""
        now = utcnow()
        async with self.sessions() as session, session.begin():
            batch = await session.get(Batch, batch_id)
            if outcome == "completed" and batch.status != "finalizing":
                batch.status, batch.finalizing_at = "finalizing", now
        async with self.sessions() as session:
            batch = await session.get(Batch, batch_id)
            rows = list(await session.execute(
                select(BatchLine.line, BatchLine.custom_id, BatchLine.done, BatchLine.status_code,
                       BatchLine.request_id, BatchLine.response)
                .where(BatchLine.batch_id == batch_id).order_by(BatchLine.line)))
        out, err, unrun = [], [], 0
        for line, custom_id, done, status, request_id, response in rows:
            doc = {"id": line_request_id(batch_id, line), "custom_id": custom_id}
            if done:
                doc |= {"response": {"status_code": status, "request_id": request_id, "body": json.loads(response)},
                        "error": None}
                (out if 200 <= status < 300 else err).append(doc)
            else:
                code, message = _UNRUN[outcome]
                doc |= {"response": None, "error": {"code": code, "message": message}}
                err.append(doc)
                unrun += 1
        made = []
        for kind, docs in (("output", out), ("errors", err)):
            if docs:
                lines = [json.dumps(d, separators=(",", ":")).encode() + b"\n" for d in docs]
                made.append(await asyncio.to_thread(self.files.write_generated, file_id_for(batch_id, kind),
                                                    f"{batch_id}_{kind}.jsonl", batch.owner, lines))
        ended = utcnow()
        async with self.sessions() as session, session.begin():
            for row in made:
                await session.merge(row)
            values = {"status": outcome, f"{outcome}_at": ended, "failed": Batch.failed + unrun,
                      "output_file_id": file_id_for(batch_id, "output") if out else "",
                      "error_file_id": file_id_for(batch_id, "errors") if err else ""}
            await session.execute(update(Batch).where(Batch.id == batch_id,
                                                      Batch.status.not_in(TERMINAL_STATUSES)).values(**values))
        log.info("batch %s %s: %d ok, %d failed, %d not run", batch_id, outcome, len(out), len(err) - unrun, unrun)


def _final_refusal(resp: httpx.Response) -> bool:
    """A 429 that waiting does not cure: the request alone exceeds the key's tokens-per-minute limit."""
    if resp.status_code != 429:
        return False
    with suppress(ValueError, AttributeError, TypeError):
        return resp.json()["error"]["code"] == "tokens_exceed_limit"
    return False


def _retry_after(resp: httpx.Response, attempt: int) -> float:
    with suppress(TypeError, ValueError):
        return min(60.0, max(0.2, float(resp.headers.get("retry-after"))))
    return min(MAX_BACKOFF_S, 0.5 * 2 ** min(attempt, 5))


async def _cancel(tasks: dict[int, asyncio.Task]) -> None:
    for t in tasks.values():
        t.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    tasks.clear()
