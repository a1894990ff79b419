"""Limits at the edge, and one request's failure staying in that request (real stack, real vLLM worker).

Each input and what it gets:

- a JSON body over ``max_body_bytes`` (16 MiB) that declares its length, without a key: 413
  ``request_too_large`` at once, not a byte of the body read;
- the same sent chunked (no length): 413 as soon as the limit is passed, the rest never read;
- an upload over ``max_upload_bytes`` (512 MiB) by its ``Content-Length``: 413 before a byte is read;
- a 6 MiB prompt (under the body cap, far over the context window): 400 ``context_length_exceeded``
  without being tokenized, while four other streams on the same gateway finish untouched.
Before this, that 6 MiB prompt broke every stream on the gateway's shared call to the router and itself got
503 ``overloaded``.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time

import httpx
import psutil

from tests.router.load import client_for, stream_chat

MiB = 1024 * 1024


def _rss(stack) -> int:
    return psutil.Process(stack.procs["gateway"].popen.pid).memory_info().rss


def _raw(stack, head: bytes, body_chunks=(), read_timeout_s: float = 30.0) -> tuple[int, dict, int]:
    """Send a request over a plain socket, stopping as soon as the server answers; (status, error, sent)."""
    sock = socket.create_connection((stack.cfg.host, stack.cfg.gateway_port), timeout=read_timeout_s)
    sent = 0
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered already: the server stopped reading
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            part = sock.recv(65536)
            if not part:
                break
            data += part
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}"), sent


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _ready(stack) -> bool:
    return httpx.get(f"http://{stack.cfg.host}:{stack.cfg.gateway_port}/readyz", timeout=10).status_code == 200


def test_an_unauthenticated_256_mib_body_with_its_length_is_refused_before_it_is_read(stack):
    before = _rss(stack)
    started = time.monotonic()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {256 * MiB}\r\n\r\n").encode()
    status, body, _ = _raw(stack, head)
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert time.monotonic() - started < 30  # a bound on a hang, not a speed claim
    assert _rss(stack) - before < 32 * MiB
    assert _ready(stack)


def test_a_chunked_body_is_cut_off_when_it_passes_the_limit(stack):
    before = _rss(stack)
    chunk = b"x" * MiB
    framed = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(256))
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    status, body, sent = _raw(stack, head, framed)
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert sent < 64 * MiB, f"the gateway read {sent} bytes of a body capped at 16 MiB"
    assert _rss(stack) - before < 48 * MiB
    assert _ready(stack)


def test_an_upload_over_512_mib_is_refused_by_its_declared_length(stack, api_key):
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {600 * MiB}\r\n\r\n").encode()
    status, body, _ = _raw(stack, head)
    assert status == 413 and body["error"]["code"] == "request_too_large", body


def test_a_body_under_the_cap_is_still_read_and_judged_on_its_content(stack, api_key):
    r = httpx.post(f"{stack.cfg.base_url}/chat/completions", content=b"{" * (2 * MiB),
                   headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text


async def test_four_streams_finish_while_another_key_sends_a_6_mib_prompt(stack, api_key, model_name):
    other = httpx.post(f"{stack.cfg.base_url}/admin/keys", json={"name": "big-prompt", "owner": "mallory"},
                       headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert other.status_code == 201, other.text
    async with client_for(stack.cfg.base_url, api_key) as a, client_for(stack.cfg.base_url, other.json()["key"]) as b:
        started = [asyncio.Event() for _ in range(4)]
        streams = [asyncio.create_task(stream_chat(a, model_name, f"Tell me about city {i}.", 64, started[i],
                                                   temperature=0, ignore_eos=True))
                   for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 120)
        big = await b.post("/chat/completions", json={
            "model": model_name, "messages": [{"role": "user", "content": "y " * (3 * MiB)}], "max_tokens": 4})
        results = await asyncio.gather(*streams)
    assert big.status_code == 400, big.text
    assert big.json()["error"]["code"] == "context_length_exceeded"
    assert big.json()["error"]["param"] == "messages"
    for r in results:
        assert r.status == 200 and r.done and r.error is None, r
        assert r.finish_reason == "length" and r.tokens > 0  # ran to max_tokens, unbroken


def test_unknown_model_names_share_one_metric_label(stack, api_key, model_name):
    """A client can send any string as ``model``, with or without a valid key; each would become a new
    series in every gateway metric. Names the router does not list count as ``other``."""
    import uuid

    names = [f"no-such-model-{uuid.uuid4().hex}" for _ in range(10)]
    for i, name in enumerate(names):
        headers = {"Authorization": f"Bearer {api_key}"} if i % 2 else {}
        r = httpx.post(f"{stack.cfg.base_url}/chat/completions", headers=headers, timeout=30,
                       json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code in (401, 404), r.text
    ok = httpx.post(f"{stack.cfg.base_url}/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                    json={"model": model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                    timeout=60)
    assert ok.status_code == 200, ok.text
    text = httpx.get(f"http://{stack.cfg.host}:{stack.cfg.gateway_port}/metrics", timeout=10).text
    assert not [line for line in text.splitlines() if any(name in line for name in names)]
    assert 'model="other"' in text and f'model="{model_name}"' in text


def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(stack):
    """A 100 MiB upload (under the cap) from a client without a valid key: 401 with only the headers sent,
    so no one without a key can make the gateway spool an upload to disk."""
    for auth in ("", "Authorization: Bearer sk-not-a-key-000000000000000000000000000000\r\n"):
        head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {100 * MiB}\r\n\r\n").encode()
        status, body, _ = _raw(stack, head)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body
