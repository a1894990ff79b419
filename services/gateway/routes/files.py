"""OpenAI's files API for training data: ``/v1/files`` (upload, list, retrieve, delete, content).

Uploads stream to the trainer service, which validates the JSONL (chat,
preference or text examples) before it keeps the file; a bad file is a 400
that names the line and the problem.
"""

from __future__ import annotations

from typing import Annotated, Literal

import grpc
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from services.common.grpcutil import request_metadata
from services.common.pb import trainer_pb2 as pb

from ..deps import SettingsDep, UpstreamsDep
from .fine_tuning import admit_train, call, page, trainer_error, trainer_stub

router = APIRouter(prefix="/v1", tags=["files"])
CHUNK = 256 * 1024


def file_obj(f: pb.TrainingFile) -> dict:
    return {"object": "file", "id": f.id, "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": f.status or "processed", "status_details": f.status_details or None,
            "expires_at": None}


@router.post("/files")
async def upload_file(request: Request, settings: SettingsDep, upstreams: UpstreamsDep,
                      file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
    admission = await admit_train(request, settings, upstreams)

    async def chunks():
        yield pb.UploadFileChunk(header=pb.UploadFileHeader(filename=file.filename or "upload.jsonl",
                                                            purpose=purpose, owner=admission.key_id))
        while data := await file.read(CHUNK):
            yield pb.UploadFileChunk(data=data)

    try:
        stored = await trainer_stub(upstreams, settings).UploadFile(chunks(), timeout=600,
                                                                    metadata=request_metadata())
    except grpc.aio.AioRpcError as exc:
        raise trainer_error(exc) from None
    return file_obj(stored)


@router.get("/files")
async def list_files(request: Request, settings: SettingsDep, upstreams: UpstreamsDep, purpose: str = "",
                     after: str = "", limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                     order: Literal["asc", "desc"] = "desc"):
    await admit_train(request, settings, upstreams)
    resp = await call(trainer_stub(upstreams, settings).ListFiles,
                      pb.ListFilesRequest(purpose=purpose, after=after, limit=limit, order=order))
    return page([file_obj(f) for f in resp.files], resp.has_more)


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    await admit_train(request, settings, upstreams)
    return file_obj(await call(trainer_stub(upstreams, settings).GetFile, pb.FileRequest(file_id=file_id)))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    await admit_train(request, settings, upstreams)
    resp = await call(trainer_stub(upstreams, settings).DeleteFile, pb.FileRequest(file_id=file_id))
    return {"object": "file", "id": resp.file_id, "deleted": resp.deleted}


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    await admit_train(request, settings, upstreams)
    stub = trainer_stub(upstreams, settings)
    await call(stub.GetFile, pb.FileRequest(file_id=file_id))  # a 404 before any byte is sent
    stream = stub.GetFileContent(pb.FileRequest(file_id=file_id), timeout=600, metadata=request_metadata())

    async def body():
        try:
            async for chunk in stream:
                yield chunk.data
        finally:
            stream.cancel()

    return StreamingResponse(body(), media_type="application/octet-stream")
