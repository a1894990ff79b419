"""The generation flow shared by chat and completions.

validate (pydantic) → admit (auth, one gRPC call) → open the upstream streams
and wait for their first chunk → stream SSE or fold into one JSON body →
report the actual usage to auth. A client that disconnects cancels the
upstream calls, which aborts the vLLM requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from services.common.pb import inference_pb2 as pb

from . import batch_lines, metrics
from .admission import Admission, admit, report_usage
from .config import GatewaySettings
from .errors import APIError
from .middleware import BODY_SEND, metric_model
from .openai_format import sse
from .routing_hints import RoutingHints
from .upstream import Generation, Upstreams

log = logging.getLogger(__name__)


class _SSEResponse(Response):
    """A server-sent event stream, sent as it is produced; it stops as soon as the client goes away.

    Starlette's ``StreamingResponse`` runs the body and a disconnect listener in an anyio task group, whose
    set-up and cancellation cost more CPU per request than the rest of a short stream's sending. Here the
    listener is one plain task, which cancels the sending task when the client disconnects. Either way the
    body generator is closed when the response ends, however it ends, so its ``finally`` (cancel the
    upstream streams, which aborts the vLLM requests, and report the usage) runs at once and does not wait
    for garbage collection, as it would for a generator left suspended at a ``yield``."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope, receive, send) -> None:
        sending = asyncio.current_task()
        done = gone = False

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:  # after the last byte, uvicorn reports the end as a disconnect too
                gone = True
                sending.cancel()

        listener = asyncio.get_running_loop().create_task(listen())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            # The events go past the wrappers of ``send`` that only watch the start (see middleware.BODY_SEND),
            # which on the token path is a coroutine call each per event; the end goes through all of them.
            send_body = scope.get(BODY_SEND, send)
            async for chunk in self.body_iterator:
                await send_body({"type": "http.response.body", "body": chunk, "more_body": True})
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            sending.uncancel()  # the client left: nothing more to send, and nothing went wrong
        finally:
            listener.cancel()
            await self.body_iterator.aclose()


class _ClientGone(Exception):
    """The client of a non-streamed request disconnected before its answer was ready."""


class GenerationFlow:
    """Runs one API call that fans out into one or more upstream generations."""

    def __init__(self, request: Request, settings: GatewaySettings, upstreams: Upstreams, *, route: str,
                 model: str, formatter, stream: bool, role_chunks: bool) -> None:
        self.request = request
        self.settings = settings
        self.upstreams = upstreams
        self.route = route
        self.model = model
        self.fmt = formatter
        self.stream = stream
        self.role_chunks = role_chunks
        self.request_id = request.state.request_id
        self.started = time.perf_counter()
        self.admission: Admission | None = None
        self.hints: RoutingHints | None = None
        self.generations: list[Generation] = []

    async def run(self, requests: list[pb.GenerateRequest], reserve_tokens: int) -> JSONResponse | Response:
        await self.admit(reserve_tokens)
        return await self.generate(requests)

    async def admit(self, reserve_tokens: int) -> Admission:
        """Authenticate the caller and reserve ``reserve_tokens``; a key that may not use the model is a 404."""
        self.hints = RoutingHints.from_headers(self.request)  # a bad header is a 400 before anything is reserved
        self.admission = await admit(self.upstreams, self.request, model=self.model, scope="chat",
                                     reserve_tokens=reserve_tokens, timeout_s=self.settings.auth_timeout_s)
        try:
            self.upstreams.check_owner(self.admission, self.model)
        except APIError:
            self._report("error")
            raise
        return self.admission

    def fail(self, exc: APIError) -> APIError:
        """An error after admission and before any generation started: the reservation is released."""
        self._report("error")
        exc.headers = {**self.admission.headers, **exc.headers}
        return exc

    async def generate(self, requests: list[pb.GenerateRequest]) -> JSONResponse | Response:
        """Start the admitted request's generations and answer with their stream or their folded result."""
        self.hints.apply(requests, self.admission.scopes)
        try:
            self.generations = [Generation(self.upstreams, r, self.settings.request_timeout_s) for r in requests]
            await asyncio.gather(*(g.start() for g in self.generations))
        except BaseException as exc:
            self._close_all()
            self._report("error" if isinstance(exc, APIError) else "cancelled")
            if isinstance(exc, APIError):
                exc.headers = {**self.admission.headers, **exc.headers}
            raise
        ttft = self.generations[0].first_token_at - self.started
        metrics.TTFT.labels(metric_model(self.request.scope, self.model)).observe(ttft)
        headers = {"x-request-id": self.request_id, **self.admission.headers}
        if self.stream:
            return _SSEResponse(self._sse(), {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
        try:
            doc = await self._fold_while_connected()
            # A batch line's answer is recorded before it goes back: the runner may die in between.
            headers |= await batch_lines.record(self.upstreams, self.admission, doc, self._usage("ok"),
                                                self.settings.auth_timeout_s)
        except APIError as exc:
            self._report("error")
            exc.headers = {**headers, **exc.headers}
            raise
        except _ClientGone:
            # Nobody is left to read the answer (a batch runner that was stopped, a client that timed out):
            # the upstream streams are closed below, which aborts the vLLM requests, as for a stream.
            self._report("cancelled")
            return Response(status_code=499)
        finally:
            self._close_all()
        self._report("ok")
        return JSONResponse(doc, headers=headers)

    async def _fold_while_connected(self) -> dict:
        """The folded body; :class:`_ClientGone` as soon as the client disconnects before it is ready."""
        me = asyncio.current_task()
        gone = False

        async def listen() -> None:
            nonlocal gone
            # The body has been read: the next message is the disconnect (or nothing, until the answer is out).
            while (await self.request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            me.cancel()

        listener = asyncio.get_running_loop().create_task(listen())
        try:
            async for offset, chunk in self._merged():
                self.fmt.fold(chunk, offset)
            return await self.final()
        except asyncio.CancelledError:
            if not gone:
                raise
            me.uncancel()
            raise _ClientGone() from None
        finally:
            listener.cancel()

    async def final(self) -> dict:
        """The non-streamed body, once every chunk is folded."""
        return self.fmt.response()

    async def _merged(self) -> AsyncIterator[tuple[int, pb.GenerateChunk]]:
        """Chunks of every generation as they arrive, with each one's choice-index offset."""
        n = max(1, self.generations[0].request.params.n)
        if len(self.generations) == 1:
            async for chunk in self.generations[0].chunks():
                yield 0, chunk
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, g: Generation) -> None:
            try:
                async for chunk in g.chunks():
                    await queue.put((i * n, chunk))
            except APIError as exc:
                await queue.put(exc)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.generations)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, APIError):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _sse(self) -> AsyncIterator[bytes]:
        status = "cancelled"
        try:
            if self.role_chunks:
                # Every chunk names the model that serves the request (an alias resolves to a version),
                # the role chunks too: they go out before the rest but after the first upstream chunk.
                self.fmt.model = self.generations[0].model or self.fmt.model
                n = max(1, self.generations[0].request.params.n)
                for i in range(len(self.generations)):
                    for doc in self.fmt.role_chunks(i * n):
                        yield sse(doc)
            async for offset, chunk in self._merged():
                # One write per upstream chunk: a merged chunk's events go out together.
                if data := self.fmt.stream_bytes(chunk, offset):
                    yield data
            if self.fmt.include_usage:
                yield sse(self.fmt.usage_chunk())
            status = "ok"
        except APIError as exc:
            # Headers are gone; OpenAI's streaming error shape is an error event, then the end.
            status = "error"
            log.warning("stream broke after start: %s", exc.message)
            yield sse(exc.body())
        finally:
            self._close_all()
            self._report(status)
        yield sse("[DONE]")

    def _close_all(self) -> None:
        for g in self.generations:
            g.close()

    def _usage(self, status: str) -> dict:
        """The request's usage so far, as :func:`.admission.usage_report`'s keywords."""
        return {"request_id": self.request_id, "model": self.model,
                "prompt_tokens": sum(g.usage.prompt_tokens for g in self.generations),
                "completion_tokens": sum(g.usage.completion_tokens for g in self.generations),
                "status": status, "latency_s": time.perf_counter() - self.started}

    def _report(self, status: str) -> None:
        usage = self._usage(status)
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        label = metric_model(self.request.scope, self.model)
        metrics.TOKENS.labels(label, "prompt").inc(prompt)
        metrics.TOKENS.labels(label, "completion").inc(completion)
        first = self.generations[0].first_token_at if self.generations else None
        if first and completion > 1:
            metrics.ITL.labels(label).observe((time.perf_counter() - first) / (completion - 1))
        if self.admission is not None:
            report_usage(self.upstreams, self.admission, **usage)
