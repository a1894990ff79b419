"""OpenAI's files API for training data: ``/v1/files`` (upload, list, retrieve, delete, content).

Uploads stream to the trainer service, which validates the JSONL (chat,
preference or text examples) before it keeps the file; a bad file is a 400
that names the line and the problem.
"""

from __future__ import annotations

from typing import Annotated, Literal

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from services.common.pb import trainer_pb2 as pb

from ..deps import SettingsDep, TrainCaller, UpstreamsDep
from ..errors import APIError
from .fine_tuning import call, page, trainer_error, trainer_stub

router = APIRouter(prefix="/v1", tags=["files"])
CHUNK = 256 * 1024
MAX_FILENAME = 255


def file_obj(f: pb.TrainingFile) -> dict:
    return {"object": "file", "id": f.id, "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": f.status or "processed", "status_details": f.status_details or None,
            "expires_at": None}


@router.post("/files")
async def upload_file(caller: TrainCaller, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    """Multipart ``file`` and ``purpose``, as OpenAI's. The key is checked before a byte of the body is read
    (the body is parsed here, after the ``TrainCaller`` dependency, not by FastAPI ahead of it), so a client
    without a valid key cannot make the gateway spool an upload."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "Send the upload as multipart/form-data with the fields 'file' and 'purpose'.",
                       param="file")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # noqa: BLE001 - Starlette's parse errors: the client's framing
        raise APIError(400, f"Could not read the multipart upload ({getattr(exc, 'detail', exc)}).",
                       param="file") from None
    try:
        file, purpose = form.get("file"), form.get("purpose")
        if not isinstance(file, UploadFile):
            raise APIError(400, "The upload has no 'file' part.", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise APIError(400, "The upload has no 'purpose' field.", param="purpose")
        if len(file.filename or "") > MAX_FILENAME:
            raise APIError(400, f"The file name is {len(file.filename)} characters long; at most {MAX_FILENAME}.",
                           param="file")

        async def chunks():
            yield pb.UploadFileChunk(header=pb.UploadFileHeader(filename=file.filename or "upload.jsonl",
                                                                purpose=purpose))
            while data := await file.read(CHUNK):
                yield pb.UploadFileChunk(data=data)

        try:
            stored = await trainer_stub(upstreams, settings).UploadFile(chunks(), timeout=600,
                                                                        metadata=caller.metadata)
        except grpc.aio.AioRpcError as exc:
            raise trainer_error(exc) from None
        return file_obj(stored)
    finally:
        await form.close()


@router.get("/files")
async def list_files(caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep, purpose: str = "",
                     after: str = "", limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                     order: Literal["asc", "desc"] = "desc"):
    resp = await call(caller, trainer_stub(upstreams, settings).ListFiles,
                      pb.ListFilesRequest(purpose=purpose, after=after, limit=limit, order=order))
    return page([file_obj(f) for f in resp.files], resp.has_more)


@router.get("/files/{file_id}")
async def get_file(file_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    return file_obj(await call(caller, trainer_stub(upstreams, settings).GetFile, pb.FileRequest(file_id=file_id)))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    resp = await call(caller, trainer_stub(upstreams, settings).DeleteFile, pb.FileRequest(file_id=file_id))
    return {"object": "file", "id": resp.file_id, "deleted": resp.deleted}


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, caller: TrainCaller, settings: SettingsDep, upstreams: UpstreamsDep):
    stub = trainer_stub(upstreams, settings)
    await call(caller, stub.GetFile, pb.FileRequest(file_id=file_id))  # a 404 before any byte is sent
    stream = stub.GetFileContent(pb.FileRequest(file_id=file_id), timeout=600, metadata=caller.metadata)

    async def body():
        try:
            async for chunk in stream:
                yield chunk.data
        finally:
            stream.cancel()

    return StreamingResponse(body(), media_type="application/octet-stream")
