"""Hostile and malformed input, each named with what it gets (real stack). None is a 500, a hang, or harm to
the server: after each, ``/readyz`` is 200 and a normal chat is served.

| input | outcome |
|---|---|
| JSON nested 100,000 deep | 400 |
| 257 prompts in one /v1/completions | 400 naming ``prompt`` |
| 64 prompts × n=8 (512 generations) | 400 naming ``prompt`` |
| 200 requests naming unknown models | 404 each; the metrics gain one ``other`` label, not 200 |
| an upload with a 1,000- or 10,000-character filename | 400 naming ``file`` |
| a multipart body that is not multipart | 400 |
| a body that stops arriving midway (slowloris) | 408 ``request_timeout`` after the body idle timeout |
| a JSON body that is a list, a string, a number | 400 |
| a prompt of escaped NUL characters and unpaired surrogates | 400 or 200, never 500 |
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest


def _post(stack, api_key, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}", **kw.pop("headers", {})}
    return httpx.post(f"{stack.cfg.base_url}{path}", headers=headers, timeout=120, **kw)


@pytest.fixture(autouse=True)
def _still_serving(stack, api_key, model_name):
    yield
    assert httpx.get(f"{stack.cfg.base_url.removesuffix('/v1')}/readyz", timeout=10).status_code == 200
    ok = _post(stack, api_key, "/chat/completions",
               json={"model": model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_deeply_nested_json_is_400(stack, api_key):
    body = b"[" * 100_000 + b"]" * 100_000
    _error(_post(stack, api_key, "/chat/completions", content=body, headers={"Content-Type": "application/json"}),
           400)


@pytest.mark.parametrize("shape", ["list", "string", "number"])
def test_a_body_that_is_not_an_object_is_400(stack, api_key, shape):
    body = {"list": [1, 2], "string": "hello", "number": 7}[shape]
    _error(_post(stack, api_key, "/chat/completions", json=body), 400)


def test_too_many_prompts_is_400(stack, api_key, model_name):
    err = _error(_post(stack, api_key, "/completions",
                       json={"model": model_name, "prompt": ["x"] * 257, "max_tokens": 1}), 400)
    assert err["param"] == "prompt"


def test_prompts_times_n_past_the_cap_is_400(stack, api_key, model_name):
    err = _error(_post(stack, api_key, "/completions",
                       json={"model": model_name, "prompt": ["x"] * 64, "n": 8, "max_tokens": 1,
                             "temperature": 1.0}), 400)
    assert err["param"] == "prompt" and "512 generations" in err["message"]


def test_unknown_models_in_bulk_are_404_and_one_metric_label(stack, api_key):
    with httpx.Client(base_url=stack.cfg.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as c:
        for i in range(200):
            r = c.post("/chat/completions", json={"model": f"bulk-unknown-{i}",
                                                  "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    text = httpx.get(f"{stack.cfg.base_url.removesuffix('/v1')}/metrics", timeout=10).text
    assert "bulk-unknown-" not in text


@pytest.mark.parametrize("length", [1_000, 10_000])
def test_an_upload_with_a_huge_filename_is_400(stack, api_key, length):
    line = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    r = _post(stack, api_key, "/files", files={"file": ("x" * length + ".jsonl", line.encode() + b"\n")},
              data={"purpose": "fine-tune"})
    assert _error(r, 400)["param"] == "file"


def test_a_body_that_claims_multipart_but_is_not_is_400(stack, api_key):
    r = _post(stack, api_key, "/files", content=b"this is not multipart",
              headers={"Content-Type": "multipart/form-data; boundary=zzz"})
    _error(r, 400)


def test_a_prompt_of_nul_bytes_and_lone_surrogates_is_never_a_500(stack, api_key, model_name):
    text = "\\u0000" * 1000 + "\\ud800" + "\\udfff"
    body = ('{"model": "' + model_name + '", "messages": [{"role": "user", "content": "' + text
            + '"}], "max_tokens": 2}').encode()
    r = _post(stack, api_key, "/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), r.text


def test_a_body_that_stops_arriving_is_cut_off_with_408(stack, api_key, model_name):
    sock = socket.create_connection((stack.cfg.host, stack.cfg.gateway_port), timeout=60)
    try:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ".encode())
        started = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert time.monotonic() - started < 55  # the idle timeout, not a hang
    finally:
        sock.close()
