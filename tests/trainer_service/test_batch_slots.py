"""The batch runner's slots are shared by every batch it runs, however many start at the same moment.

The runner here is the real one, on a real database (SQLite and PostgreSQL), sending real HTTP requests. What
answers them is a stand-in for the gateway on a real port: it holds each request open for a while and counts how
many are open at once. The real gateway and engine (``tests/gateway/test_batches.py``) answer too unevenly for
the count to be exact there: batches that start in the same tick, the case this file is about, happen there only
by chance.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
import uvicorn
from sqlalchemy import func, insert, select

from services.common.db.base import utcnow
from services.common.db.batch_tables import Batch, BatchLine
from services.common.db.engine import make_engine, session_factory
from services.common.db.migrate import upgrade_async
from services.common.identity import IdentityCodec
from services.trainer.batches.runner import BatchRunner
from services.trainer.files import FileStore

SLOTS = 4


class HoldingGateway:
    """An ASGI app that answers every POST with a chat completion after ``hold_s``, counting open requests. A
    request whose client leaves first is dropped there (counted in ``left``), as the gateway aborts it."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s, self.open, self.most, self.seen, self.left = hold_s, 0, 0, [], 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = dict(scope["headers"])
        self.seen.append(headers.get(b"x-priority", b"").decode())
        self.open += 1
        self.most = max(self.most, self.open)
        leaving = asyncio.ensure_future(receive())  # the next message is http.disconnect, whenever it comes
        try:
            await asyncio.wait([leaving], timeout=self.hold_s)
        finally:
            self.open -= 1
        if leaving.done():
            self.left += 1
            return
        leaving.cancel()
        answer = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "model": json.loads(body)["model"],
                             "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                      "total_tokens": 5}}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


async def _serve(app) -> tuple[uvicorn.Server, asyncio.Task, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


async def _add_batch(sessions, lines: int) -> str:
    """A new ``in_progress`` batch of ``lines`` chat lines, of an owner of its own; its id."""
    now, name = utcnow(), secrets.token_hex(6)
    batch_id = f"batch_{name}"
    async with sessions() as session, session.begin():
        session.add(Batch(id=batch_id, owner=f"team-{name}", key_id=f"key-{name}", endpoint="/v1/chat/completions",
                          input_file_id=f"file-{name}", completion_window="24h", status="in_progress", model="m",
                          batch_metadata={}, errors=[], output_file_id="", error_file_id="", total=lines,
                          completed=0, failed=0, input_tokens=0, output_tokens=0, created_at=now,
                          in_progress_at=now, expires_at=now + timedelta(hours=24)))
        await session.flush()
        await session.execute(insert(BatchLine), [
            {"batch_id": batch_id, "line": i, "custom_id": f"{name}{i}", "done": False, "status_code": 0,
             "request_id": "", "response": "",
             "body": json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})}
            for i in range(lines)])
    return batch_id


@asynccontextmanager
async def _rig(db_url: str, tmp_path, hold_s: float):
    """(sessions, gateway, runner) on a migrated database, the gateway serving; the runner is not started yet."""
    await upgrade_async(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    gateway = HoldingGateway(hold_s)
    server, serving, port = await _serve(gateway)
    runner = BatchRunner(sessions, FileStore(tmp_path / "files", sessions, 2**20), gateway_url=f"http://127.0.0.1:{port}",
                         leader=lambda: True, concurrency=SLOTS, poll_interval_s=0.1, codec=IdentityCodec("s3cret"))
    try:
        yield sessions, gateway, runner
        assert runner._sending == set() and runner._claimed == 0, "slots still held after every batch ended"
    finally:
        await runner.close()
        server.should_exit = True
        await serving
        await engine.dispose()


@pytest.mark.parametrize("batches", [3, 6])
async def test_batches_that_start_together_never_hold_more_than_the_runners_slots(db_url, tmp_path, batches):
    """Several batches, all in the database before the runner starts, so its first tick starts them together:
    every line of every batch is answered and recorded, and the gateway never holds more than the runner's
    slots (4) of their requests at once. (Each batch used to count the slots free before it read its lines and
    filled them after, so batches reading at the same time filled the same slots: up to 4 per batch.)"""
    async with _rig(db_url, tmp_path, hold_s=0.3) as (sessions, gateway, runner):
        ids = [await _add_batch(sessions, 5) for _ in range(batches)]
        runner.start()
        async with asyncio.timeout(120):
            while True:
                async with sessions() as session:
                    statuses = set(await session.scalars(select(Batch.status).where(Batch.id.in_(ids))))
                if statuses == {"completed"}:
                    break
                await asyncio.sleep(0.1)
        async with sessions() as session:
            done = await session.scalar(select(func.count()).select_from(BatchLine).where(
                BatchLine.batch_id.in_(ids), BatchLine.done.is_(True), BatchLine.status_code == 200))
            counted = list(await session.scalars(select(Batch.completed).where(Batch.id.in_(ids))))
        assert done == 5 * batches and counted == [5] * batches
        assert len(gateway.seen) == 5 * batches and set(gateway.seen) == {"batch"}
        assert gateway.most == SLOTS, f"{gateway.most} requests were open at once; the runner has {SLOTS} slots"


async def test_a_cancelled_batch_hands_its_slots_to_the_others(db_url, tmp_path):
    """A batch cancelled while its lines hold every slot: it ends ``cancelled`` with its unsent lines in its error
    file, its requests in flight are closed and their slots go back, and the batch behind it then runs with all
    of them and completes, the slots never exceeded."""
    async with _rig(db_url, tmp_path, hold_s=1.0) as (sessions, gateway, runner):
        first = await _add_batch(sessions, 12)
        runner.start()
        async with asyncio.timeout(60):
            while gateway.open < SLOTS:
                await asyncio.sleep(0.02)
        second = await _add_batch(sessions, 6)
        async with sessions() as session, session.begin():
            (await session.get(Batch, first)).status = "cancelling"
        async with asyncio.timeout(120):
            while True:
                async with sessions() as session:
                    a, b = await session.get(Batch, first), await session.get(Batch, second)
                if a.status == "cancelled" and b.status == "completed":
                    break
                await asyncio.sleep(0.1)
        assert b.completed == 6 and a.completed + a.failed == 12 and a.failed > 0 and a.error_file_id
        assert gateway.left >= 1, "the cancelled batch's requests in flight were not closed"
        assert gateway.most == SLOTS
