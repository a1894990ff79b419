"""An OpenAI-compatible HTTP stand-in that answers at once: the upstream for the gateway-overhead
benchmark's direct and LiteLLM sides (llmsvc's side uses the gRPC stand-in worker,
:mod:`services.router.standin`, which streams the same canned tokens).

    .venv/bin/python -m bench.serve_standin_http --port 9100 --model tiny-random

A bare ASGI app on uvicorn (no framework), so that its own cost stays small and equal on every run.
"""

from __future__ import annotations

import argparse
import json
import time

import uvicorn

MODEL = "tiny-random"


def _chunk(i: int, n: int, rid: str) -> bytes:
    last = i == n - 1
    doc = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
           "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": "length" if last else None}]}
    if last:
        doc["usage"] = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


async def _body(receive) -> dict:
    data = b""
    while True:
        msg = await receive()
        data += msg.get("body", b"")
        if not msg.get("more_body"):
            return json.loads(data or b"{}")


async def _send_json(send, doc: dict, status: int = 200) -> None:
    payload = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/models"):
        await _send_json(send, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}]})
        return
    body = await _body(receive)
    n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    rid = f"chatcmpl-{time.monotonic_ns()}"
    if not body.get("stream"):
        await _send_json(send, {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": MODEL,
                                "choices": [{"index": 0, "finish_reason": "length", "message": {
                                    "role": "assistant", "content": "".join(f"tok{i} " for i in range(n))}}],
                                "usage": {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(n):
        await send({"type": "http.response.body", "body": _chunk(i, n, rid), "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def main() -> None:
    global MODEL
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default=MODEL)
    a = p.parse_args()
    MODEL = a.model
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
