"""``POST /v1/embeddings``: OpenAI's embeddings, from the pooling workers (vLLM's pooling runner).

Admitted and metered as chat is (scope ``chat``; the reservation is the inputs' bytes, or token ids, which bound
their tokens from above; usage is reconciled to the tokens the worker counted). ``encoding_format: base64``
sends each vector as little-endian float32 bytes, as OpenAI does.
"""

from __future__ import annotations

import base64
import sys
import time
from array import array
from typing import Annotated, Literal

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from services.common.grpcutil import request_metadata
from services.common.pb import inference_pb2 as pb

from .. import batch_lines, metrics
from ..admission import admit, report_usage
from ..deps import SettingsDep, UpstreamsDep
from ..errors import APIError, from_grpc
from ..middleware import metric_model
from ..routing_hints import RoutingHints
from ..schemas import TokenIds, _Body

router = APIRouter(prefix="/v1", tags=["embeddings"])
MAX_INPUTS = 2048
"""OpenAI's limit on inputs per request."""


class EmbeddingRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: (Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]],
                                                            Field(min_length=1, max_length=MAX_INPUTS)]
            | TokenIds | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if isinstance(v, str) or (v and isinstance(v[0], int)):
            return [v]
        return list(v)


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, settings: SettingsDep, upstreams: UpstreamsDep):
    request.state.model = body.model
    hints = RoutingHints.from_headers(request)
    inputs = body.inputs()
    req = pb.EmbedRequest(request_id=request.state.request_id, model=body.model, dimensions=body.dimensions or 0,
                          user=body.user or "")
    reserve = 0
    for item in inputs:
        if isinstance(item, str):
            req.inputs.add(text=item)
            reserve += len(item.encode())
        else:
            req.inputs.add().token_ids.ids.extend(item)
            reserve += len(item)
    if window := await upstreams.context_window(body.model):
        reserve = min(reserve, window * len(inputs))
    started = time.perf_counter()
    admission = await admit(upstreams, request, model=body.model, scope="chat", reserve_tokens=reserve,
                            timeout_s=settings.auth_timeout_s)
    req.priority = max(hints.priority, 1 if "batch" in admission.scopes else 0)
    status, tokens = "error", 0
    try:
        upstreams.check_owner(admission, body.model)
        try:
            resp = await upstreams.router.Embed(req, timeout=settings.request_timeout_s,
                                                metadata=request_metadata(request.state.request_id))
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, body.model) from None
        tokens, status = resp.prompt_tokens, "ok"
    except APIError as exc:
        exc.headers = {**admission.headers, **exc.headers}
        raise
    except BaseException:
        status = "cancelled"
        raise
    finally:
        metrics.TOKENS.labels(metric_model(request.scope, body.model), "prompt").inc(tokens)
        report_usage(upstreams, admission, request_id=request.state.request_id, model=body.model,
                     prompt_tokens=tokens, completion_tokens=0, status=status,
                     latency_s=time.perf_counter() - started)
    data = []
    for i, e in enumerate(resp.data):
        if body.encoding_format == "base64":
            floats = array("f", e.values)
            if sys.byteorder == "big":
                floats.byteswap()  # OpenAI's base64 is little-endian float32
            vector = base64.b64encode(floats.tobytes()).decode()
        else:
            vector = list(e.values)
        data.append({"object": "embedding", "index": i, "embedding": vector})
    doc = {"object": "list", "data": data, "model": resp.model or body.model,
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    try:  # a batch line's answer is recorded before it goes back (see services/gateway/batch_lines.py)
        recorded = await batch_lines.record(
            upstreams, admission, doc,
            {"request_id": request.state.request_id, "model": body.model, "prompt_tokens": tokens,
             "completion_tokens": 0, "status": "ok", "latency_s": time.perf_counter() - started},
            settings.auth_timeout_s)
    except APIError as exc:
        exc.headers = {**admission.headers, **exc.headers}
        raise
    return JSONResponse(doc, headers={"x-request-id": request.state.request_id, **admission.headers, **recorded})
