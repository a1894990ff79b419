"""gRPC ``llmsvc.v1.Trainer``: training files and fine-tuning jobs.

Status changes belong to the :class:`Supervisor`; this servicer creates rows,
reads them, and records cancel requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db.job_tables import TERMINAL_STATUSES, Job
from services.common.identity import Identity, IdentityCodec
from services.common.pb import trainer_pb2 as pb
from services.common.pb import trainer_pb2_grpc

from . import repo
from .convert import checkpoint_msg, event_msg, file_msg, job_msg, to_dict
from .datafile import InvalidFile
from .files import FileStore, UploadTooLarge
from .jobs import JobFactory, NewJob, RequestError
from .notifier import Notifier
from .supervisor import Supervisor

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                 param: str | None = None, error_code: str | None = None):
    trailers = tuple((k, v) for k, v in (("param", param), ("error-code", error_code)) if v)
    context.set_trailing_metadata(trailers)
    await context.abort(code, message)


def _limit(value: int, default: int, most: int = 100) -> int:
    return min(most, value) if value > 0 else default


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], files: FileStore, factory: JobFactory,
                 supervisor: Supervisor, notifier: Notifier, cancel_wait_s: float = 5.0) -> None:
        self.sessions, self.files, self.factory = sessions, files, factory
        self.supervisor, self.notifier, self.cancel_wait_s = supervisor, notifier, cancel_wait_s
        self.identity = IdentityCodec()
        self.identity.warn_if_open("the trainer")

    def _owner(self, who: Identity, claimed: str) -> str:
        """The owner of what this call makes: the signed identity's. The owner a message names counts only
        where there is no internal secret (every caller is the operator)."""
        return who.owner if self.identity.enabled else claimed

    # -- files --------------------------------------------------------------------------
    async def UploadFile(self, request_iterator, context):
        who = await self.identity.caller(context)
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "An upload starts with a header.")

        async def data() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                yield chunk.data

        h = first.header
        try:
            row = await self.files.save(h.filename, h.purpose, self._owner(who, h.owner), data())
        except (InvalidFile, UploadTooLarge) as exc:
            param = "purpose" if "purpose" in str(exc) else "file"
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid file: {exc}.", param, "invalid_file")
        return file_msg(row)

    async def ListFiles(self, request, context):
        who = await self.identity.caller(context)
        rows, more = await self.files.list(request.purpose, request.after, _limit(request.limit, 10000, 10000),
                                           request.order or "desc", owner=who.owner_filter())
        return pb.ListFilesResponse(files=[file_msg(r) for r in rows], has_more=more)

    async def _file(self, request, context):
        """The file, if the caller's owner may see it; another owner's is as absent as one that never was."""
        who = await self.identity.caller(context)
        row = await self.files.get(request.file_id)
        if row is None or not who.may_see(row.owner):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"No such File object: {request.file_id}", "file_id")
        return row

    async def GetFile(self, request, context):
        return file_msg(await self._file(request, context))

    async def DeleteFile(self, request, context):
        await self._file(request, context)
        return pb.DeleteFileResponse(file_id=request.file_id, deleted=await self.files.delete(request.file_id))

    async def GetFileContent(self, request, context):
        row = await self._file(request, context)
        if not os.path.exists(row.path):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"The content of {row.id} is gone from the store.",
                         "file_id")
        with open(row.path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield pb.FileContentChunk(data=chunk)

    # -- jobs ---------------------------------------------------------------------------
    async def CreateJob(self, request, context):
        who = await self.identity.caller(context)
        req = NewJob(model=request.model, training_file=request.training_file,
                     validation_file=request.validation_file, hyperparameters=to_dict(request.hyperparameters),
                     method=to_dict(request.method), suffix=request.suffix, seed=request.seed,
                     metadata=dict(request.metadata), extra=to_dict(request.extra),
                     owner=self._owner(who, request.owner), admin=who.admin)
        async with self.sessions() as session:
            try:
                job = await self.factory.create(session, req)
            except RequestError as exc:
                code = (grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.RESOURCE_EXHAUSTED
                        if exc.exhausted else grpc.StatusCode.INVALID_ARGUMENT)
                await _abort(context, code, exc.message, exc.param, exc.code)
        self.supervisor.wake()
        return job_msg(job)

    async def _job(self, session: AsyncSession, job_id: str, context) -> Job:
        """The job, if the caller's owner may see it; another owner's is as absent as one that never was."""
        who = await self.identity.caller(context)
        job = await session.get(Job, job_id) if job_id else None
        if job is None or not who.may_see(job.owner):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"Fine-tuning job {job_id!r} not found.",
                         "fine_tuning_job_id")
        return job

    async def ListJobs(self, request, context):
        who = await self.identity.caller(context)
        async with self.sessions() as session:
            jobs, more = await repo.list_jobs(session, request.after, _limit(request.limit, 20),
                                              dict(request.metadata), owner=who.owner_filter())
        return pb.ListJobsResponse(jobs=[job_msg(j) for j in jobs], has_more=more)

    async def GetJob(self, request, context):
        async with self.sessions() as session:
            return job_msg(await self._job(session, request.job_id, context))

    async def CancelJob(self, request, context):
        async with self.sessions() as session:
            job = await self._job(session, request.job_id, context)
            if job.status in TERMINAL_STATUSES:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                             f"Job {job.id} has already {job.status} and cannot be cancelled.", "fine_tuning_job_id")
            if not job.cancel_requested:
                job.cancel_requested = True
                await repo.add_event(session, job.id, "Cancellation requested")
                await session.commit()
        self.supervisor.wake()
        return job_msg(await self._await_end(request.job_id, self.cancel_wait_s))

    async def _await_end(self, job_id: str, timeout_s: float) -> Job:
        """The job once terminal, or as it stands after ``timeout_s`` (a running job first checkpoints)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            async with self.sessions() as session:
                job = await session.get(Job, job_id)
            if job.status in TERMINAL_STATUSES or loop.time() >= deadline:
                return job
            await self.notifier.wait(job_id, min(0.5, max(0.0, deadline - loop.time())))

    async def ListJobEvents(self, request, context):
        async with self.sessions() as session:
            await self._job(session, request.job_id, context)
            rows, more = await repo.list_events(session, request.job_id, request.after, _limit(request.limit, 20))
        return pb.ListJobEventsResponse(events=[event_msg(e) for e in rows], has_more=more)

    async def StreamJobEvents(self, request, context):
        last = request.after
        while True:
            async with self.sessions() as session:
                job = await self._job(session, request.job_id, context)
                ended = job.status in TERMINAL_STATUSES  # read before the events, so none is missed
                rows = await repo.events_since(session, request.job_id, last)
            for ev in rows:
                yield event_msg(ev)
                last = ev.id
            if rows:
                continue
            if ended or not request.follow:
                return
            await self.notifier.wait(request.job_id, 1.0)

    async def ListCheckpoints(self, request, context):
        after = int(request.after.removeprefix("ftckpt-")) if request.after.removeprefix("ftckpt-").isdigit() else 0
        async with self.sessions() as session:
            await self._job(session, request.job_id, context)
            rows, more = await repo.list_checkpoints(session, request.job_id, after, _limit(request.limit, 10))
        return pb.ListCheckpointsResponse(checkpoints=[checkpoint_msg(c) for c in rows], has_more=more)
