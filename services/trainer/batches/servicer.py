"""gRPC ``llmsvc.v1.Batches``, served by the trainer beside its files."""

from __future__ import annotations

import grpc

from services.common.identity import IdentityCodec
from services.common.pb import batches_pb2 as pb
from services.common.pb import batches_pb2_grpc

from ..servicer import _abort, _limit
from .runner import BatchRunner
from .store import BatchNotFound, BatchStore, batch_msg
from .validate import BadBatchRequest


class BatchesServicer(batches_pb2_grpc.BatchesServicer):
    def __init__(self, store: BatchStore, runner: BatchRunner) -> None:
        self.store, self.runner = store, runner
        self.identity = IdentityCodec()

    async def CreateBatch(self, request: pb.CreateBatchRequest, context) -> pb.Batch:
        who = await self.identity.caller(context)
        if why := self.runner.unavailable:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"This deployment cannot run batches: {why}.")
        try:
            batch = await self.store.create(who, request)
        except BadBatchRequest as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), exc.param, "invalid_request")
        except BatchNotFound as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc), "input_file_id")
        self.runner.wake()
        return batch_msg(batch)

    async def GetBatch(self, request: pb.BatchRef, context) -> pb.Batch:
        who = await self.identity.caller(context)
        try:
            return batch_msg(await self.store.get(who, request.batch_id))
        except BatchNotFound as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))

    async def ListBatches(self, request: pb.ListBatchesRequest, context) -> pb.ListBatchesResponse:
        who = await self.identity.caller(context)
        rows, more = await self.store.list(who, request.after, _limit(request.limit, 20))
        return pb.ListBatchesResponse(batches=[batch_msg(b) for b in rows], has_more=more)

    async def CancelBatch(self, request: pb.BatchRef, context) -> pb.Batch:
        who = await self.identity.caller(context)
        try:
            batch = await self.store.cancel(who, request.batch_id)
        except BatchNotFound as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        self.runner.wake()
        return batch_msg(batch)
