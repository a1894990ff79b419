"""Helpers of the trainer service tests."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import grpc
import pytest

from services.common.pb import trainer_pb2 as pb

CHAT = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": str(a + b)}]} for a in range(4) for b in range(3)]


def jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


async def upload(stub, data: bytes, filename: str = "train.jsonl", purpose: str = "fine-tune") -> pb.TrainingFile:
    async def chunks():
        yield pb.UploadFileChunk(header=pb.UploadFileHeader(filename=filename, purpose=purpose))
        for i in range(0, len(data), 1000):  # several chunks, as the gateway streams them
            yield pb.UploadFileChunk(data=data[i:i + 1000])

    return await stub.UploadFile(chunks())


def job_request(file_id: str, *, model: str = "tiny-random", suffix: str = "", hyper: dict | None = None,
                extra: dict | None = None, method: dict | None = None) -> pb.CreateJobRequest:
    req = pb.CreateJobRequest(model=model, training_file=file_id, suffix=suffix, seed=1)
    req.hyperparameters.update(hyper if hyper is not None else {"steps": 4, "batch_size": 2, "seq_len": 64})
    req.extra.update(extra or {})
    req.method.update(method or {})
    return req


async def events_until_end(stub, job_id: str, after: int = 0) -> list[pb.JobEvent]:
    """Follow the job's event stream until the service ends it (the job reached a final status)."""
    return [ev async for ev in stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id=job_id, after=after,
                                                                              follow=True), timeout=300)]


async def first_event(stub, job_id: str, kind: str) -> pb.JobEvent:
    async for ev in stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id=job_id, follow=True), timeout=300):
        if ev.type == kind:
            return ev
    raise AssertionError(f"the job ended without a {kind} event")


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def trailers(exc: grpc.aio.AioRpcError) -> dict:
    return dict(exc.trailing_metadata() or ())


def versions_dir(store: Path, name: str) -> list[Path]:
    return sorted((store / name).glob("*")) if (store / name).exists() else []


@contextlib.contextmanager
def trainer_only_stack(home: Path, default_model: Path, api_key: str, **cfg):
    """gateway → auth → trainer as processes (no router or worker), the store holding the tiny base model as
    ``tiny-random``; ``cfg`` goes to :meth:`StackConfig.ephemeral`."""
    from services.cli.stack import Stack, StackConfig
    from services.common.db.migrate import upgrade

    (home / "models").mkdir()
    (home / "models" / "tiny-random").symlink_to(default_model, target_is_directory=True)
    stack = Stack(StackConfig.ephemeral(home, default_model, api_key, **cfg))
    upgrade(stack.cfg.db_url)
    for name in ("auth", "trainer", "gateway"):
        stack.spawn(name, f"services.{name}.main", stack.env_for(name))
    try:
        stack.wait_for("/fine_tuning/jobs")
        yield stack
    finally:
        stack.stop()
