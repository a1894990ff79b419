"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can cause maps to a 4xx here; upstream failures map to
502/503/504. Nothing a client sends produces a 500.
"""

from __future__ import annotations

import logging

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_grpc(exc: grpc.aio.AioRpcError, model: str | None = None) -> APIError:
    """Map an upstream gRPC status to the HTTP error a client should see."""
    code, details = exc.code(), exc.details() or ""
    trailing = dict(exc.trailing_metadata() or ())
    param = trailing.get("param") or None
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return APIError(400, details, param=param, code=trailing.get("error-code") or None)
    if code == grpc.StatusCode.NOT_FOUND:
        return APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                        code="model_not_found", param="model")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return APIError(503, details or "The server is overloaded; retry shortly.", code="overloaded",
                        headers={"retry-after": trailing.get("retry-after", "1")})
    if code == grpc.StatusCode.UNAVAILABLE:
        # The router names why when it knows: model_loading (a version starting on demand), no_capacity,
        # model_load_failed.
        return APIError(503, details or "The service is temporarily unavailable.",
                        code=trailing.get("error-code") or "service_unavailable",
                        headers={"retry-after": trailing.get("retry-after", "1")})
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return APIError(504, "The request timed out.", code="timeout")
    log.warning("upstream error %s: %s", code.name, details)
    return APIError(502, f"Upstream error: {details or code.name}", code="upstream_error")


def _param_of(loc: tuple, body=None) -> str | None:
    # pydantic puts the union member it tried in the location ("constrained-str", "list[str]",
    # "function-after[...]"); no OpenAI field is named like that.
    # A discriminated union puts the tag it matched in the location too ("response_format.json_schema" then
    # the model's own "json_schema" field): one of two equal neighbours is the tag; and where the body is
    # known, a part before the last that is no key (or index) of the body at that point is one.
    parts = [str(p) for p in loc if p != "body" and not any(c in str(p) for c in "-[(")]
    parts = [p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]]
    if isinstance(body, dict):
        kept, at = [], body
        for i, p in enumerate(parts):
            if isinstance(at, dict) and p in at:
                at = at[p]
            elif isinstance(at, list) and p.isdigit() and int(p) < len(at):
                at = at[int(p)]
            elif isinstance(at, dict | list) and i < len(parts) - 1:
                continue  # a tag: not in the body
            else:
                at = None
            kept.append(p)
        parts = kept
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return APIError(
                400, "We could not parse the JSON body of your request. The body must be valid JSON.").response()
        if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
            return APIError(400, "The request body is missing; send a JSON object.").response()
        param = _param_of(tuple(first.get("loc", ())), exc.body)
        msg = "; ".join(f"{_param_of(tuple(e.get('loc', ())), exc.body) or 'body'}: {e.get('msg')}"
                        for e in errors[:5])
        return APIError(400, f"Invalid request: {msg}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "Unknown route.", 405: "Method not allowed."}.get(exc.status_code, str(exc.detail))
        param = None
        if exc.status_code == 400 and request.headers.get("content-type", "").startswith("multipart/"):
            # FastAPI's answer to a multipart body its parser refused (bad framing, oversized part headers)
            message, param = f"Could not read the multipart upload ({exc.detail}).", "file"
        return APIError(exc.status_code, message, param=param,
                        type=_TYPES.get(exc.status_code, "invalid_request_error")).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, "The server had an error while processing your request.", type="server_error").response()
