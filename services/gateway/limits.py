"""Limits at the edge: a request body larger than the gateway accepts is refused with 413 before it is
parsed, buffered or its key checked; one that stops arriving is cut off with 408.

Pure ASGI, as the other middleware. A declared ``Content-Length`` over the limit is answered at once
without reading the body; a body sent without one (chunked) is counted as it arrives, and the moment it
passes the limit the client gets the 413 and the application sees the client gone (``http.disconnect``),
so nothing past the limit is ever held.
"""

from __future__ import annotations

import asyncio
import json

UPLOAD_PATHS = ("/v1/files",)


def _error(limit: int) -> bytes:
    return json.dumps({"error": {
        "message": f"The request body is larger than this server accepts ({limit} bytes). Send a smaller "
                   "request; training data goes to POST /v1/files.",
        "type": "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()


def _timeout_error(seconds: float) -> bytes:
    return json.dumps({"error": {
        "message": f"The request body stopped arriving: nothing came for {seconds:g} seconds.",
        "type": "invalid_request_error", "param": None, "code": "request_timeout"}}).encode()


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int, max_upload_bytes: int, idle_timeout_s: float = 20.0) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes
        self.idle_timeout_s = idle_timeout_s

    def limit_for(self, scope) -> int:
        return self.max_upload if scope.get("path", "") in UPLOAD_PATHS else self.max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False  # the server (h11/httptools) refuses a malformed length itself
            if too_large:
                await self._refuse(send, limit)
                return

        seen = 0
        refused = False
        started = False
        body_done = False

        async def counting_receive():
            nonlocal seen, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:  # past the body, receive() waits for the client to go: no deadline
                return await receive()
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                refused = True
                if not started:
                    await self._answer(send, 408, _timeout_error(self.idle_timeout_s))
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if refused:
                return  # the client already has its 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # the application failed on the disconnect it was handed; the client has its answer

    @classmethod
    async def _refuse(cls, send, limit: int) -> None:
        await cls._answer(send, 413, _error(limit))

    @staticmethod
    async def _answer(send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
