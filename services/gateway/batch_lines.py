"""A batch line's answer, recorded by the gateway that made it (``BatchResults.RecordLine``, in auth) before
the answer goes back to the batch runner: so a runner that dies after the answer was made finds the line done
and does not run it again (see ``services.trainer.batches.runner``)."""

from __future__ import annotations

import json
import logging

import grpc

from services.common.pb import batches_pb2 as pb

from .admission import Admission, usage_report
from .errors import APIError
from .upstream import Upstreams

log = logging.getLogger(__name__)


RECORDED = {"x-llmsvc-batch-recorded": "1"}
"""The header of an answer whose batch line this gateway recorded: the runner need not record it again."""


async def record(upstreams: Upstreams, admission: Admission, doc: dict, usage: dict,
                 timeout_s: float) -> dict[str, str]:
    """Record the answer when the request is a batch line, with its usage (``usage`` is
    :func:`.admission.usage_report`'s keywords: auth writes the usage with the line, in one transaction, so a
    gateway killed right after still has it charged); the headers to add to the answer."""
    if admission.batch_line is None or upstreams.batch_results is None:
        return {}
    batch_id, line = admission.batch_line
    report = usage_report(admission, **usage)
    try:
        await upstreams.batch_results.RecordLine(
            pb.LineResult(batch_id=batch_id, line=line, status_code=200, request_id=report.request_id,
                          body_json=json.dumps(doc, separators=(",", ":")), input_tokens=report.prompt_tokens,
                          output_tokens=report.completion_tokens, usage=report),
            metadata=admission.metadata, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # not this owner's batch: the runner records what it gets
            log.warning("batch line %s:%d: %s", batch_id, line, exc.details())
            return {}
        raise APIError(503, "The answer could not be recorded for its batch; the line will be sent again.",
                       code="service_unavailable", headers={"retry-after": "1"}) from None
    return RECORDED
