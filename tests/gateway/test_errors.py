"""Bad input gets an OpenAI error object with the right status, never a 500 or a hang.

Each case names the input and the status we promise for it.
"""

from __future__ import annotations

import httpx
import openai
import pytest


def _post(base_url: str, path: str, api_key: str | None, *, json=None, content=None, headers=None) -> httpx.Response:
    h = {"Content-Type": "application/json", **(headers or {})}
    if api_key is not None:
        h["Authorization"] = f"Bearer {api_key}"
    return httpx.post(f"{base_url}{path}", json=json, content=content, headers=h, timeout=60)


def _assert_error(resp: httpx.Response, status: int, *, code=None, param=None, type_=None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    if type_ is not None:
        assert err["type"] == type_
    assert resp.headers.get("x-request-id")
    return err


def _chat(model: str, **over) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **over}


BAD_BODIES = [
    # (case, body override, param named in the error)
    ("empty messages", {"messages": []}, "messages"),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("message without role", {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("negative max_tokens", {"max_tokens": -1}, "max_tokens"),
    ("zero max_tokens for chat", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens as string", {"max_tokens": "10"}, "max_tokens"),
    ("temperature too high", {"temperature": 2.5}, "temperature"),
    ("temperature negative", {"temperature": -0.1}, "temperature"),
    ("temperature wrong type", {"temperature": "hot"}, "temperature"),
    ("top_p zero", {"top_p": 0}, "top_p"),
    ("n zero", {"n": 0}, "n"),
    ("n huge", {"n": 1000}, "n"),
    ("stream not bool", {"stream": "yes"}, "stream"),
    ("empty stop string", {"stop": [""]}, "stop"),
    ("top_logprobs out of range", {"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ("presence_penalty out of range", {"presence_penalty": 3}, "presence_penalty"),
    ("model missing", {"model": None}, "model"),
    ("image content part",
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
]


@pytest.mark.parametrize("case,override,param", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_chat_bodies_are_400(base_url, api_key, model_name, case, override, param):
    body = {**_chat(model_name), **override}
    if body["model"] is None:
        del body["model"]
    err = _assert_error(_post(base_url, "/chat/completions", api_key, json=body), 400, type_="invalid_request_error")
    if param is not None:
        assert err["param"] == param


def test_malformed_json_is_400(base_url, api_key):
    _assert_error(_post(base_url, "/chat/completions", api_key, content=b'{"model": "x", "messages": ['), 400)


def test_body_that_is_not_an_object_is_400(base_url, api_key):
    _assert_error(_post(base_url, "/chat/completions", api_key, content=b"[1, 2, 3]"), 400)


def test_empty_body_is_400(base_url, api_key):
    _assert_error(_post(base_url, "/chat/completions", api_key, content=b""), 400)


def test_unknown_model_is_404(base_url, api_key):
    _assert_error(_post(base_url, "/chat/completions", api_key, json=_chat("no-such-model")), 404,
                  code="model_not_found", param="model")


def test_huge_max_tokens_is_400(base_url, api_key, model_name):
    err = _assert_error(_post(base_url, "/chat/completions", api_key, json=_chat(model_name, max_tokens=10**9)), 400,
                        code="context_length_exceeded", param="max_tokens")
    assert "maximum context length" in err["message"]


def test_n_above_one_with_greedy_sampling_is_400_and_keeps_the_worker(base_url, api_key, model_name):
    """vLLM refuses n > 1 at temperature 0 (every choice would be the same). That is the request's fault:
    a 400 naming it, and the worker stays in the pool (the next request is served, not a 503)."""
    for stream in (False, True):
        err = _assert_error(_post(base_url, "/chat/completions", api_key,
                                  json=_chat(model_name, n=2, temperature=0, stream=stream)), 400)
        assert "greedy" in err["message"]
    ok = _post(base_url, "/chat/completions", api_key, json=_chat(model_name))
    assert ok.status_code == 200, ok.text


def test_prompt_longer_than_context_is_400(base_url, api_key, model_name):
    long = "one two three four five six seven " * 400  # well past the 1024-token window
    body = {"model": model_name, "messages": [{"role": "user", "content": long}]}
    err = _assert_error(_post(base_url, "/chat/completions", api_key, json=body), 400,
                        code="context_length_exceeded", param="messages")
    assert "maximum context length" in err["message"]


def test_prompt_too_long_when_streaming_is_400_before_any_event(base_url, api_key, model_name):
    long = "one two three four five six seven " * 400
    body = {"model": model_name, "messages": [{"role": "user", "content": long}], "stream": True}
    _assert_error(_post(base_url, "/chat/completions", api_key, json=body), 400)


def test_missing_key_is_401(base_url, model_name):
    _assert_error(_post(base_url, "/chat/completions", None, json=_chat(model_name)), 401, code="invalid_api_key")


def test_wrong_key_is_401_and_reveals_nothing(base_url, api_key, model_name):
    wrong = api_key[:-4] + "zzzz"
    err = _assert_error(_post(base_url, "/chat/completions", wrong, json=_chat(model_name)), 401,
                        code="invalid_api_key")
    assert wrong not in err["message"] and api_key not in err["message"]


def test_non_bearer_scheme_is_401(base_url, api_key, model_name):
    resp = httpx.post(f"{base_url}/chat/completions", json=_chat(model_name), timeout=30,
                      headers={"Authorization": f"Basic {api_key}"})
    _assert_error(resp, 401)


def test_openai_client_raises_typed_errors(base_url, api_key, model_name):
    bad = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}])
    good = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="missing-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], temperature=9)


COMPLETION_BAD = [
    ("empty prompt string", {"prompt": ""}),
    ("empty prompt list", {"prompt": []}),
    ("negative token id", {"prompt": [1, -5]}),
    ("token id out of vocabulary", {"prompt": [1, 10**7]}),
    ("logprobs too many", {"logprobs": 50}),
]


@pytest.mark.parametrize("case,override", COMPLETION_BAD, ids=[c[0] for c in COMPLETION_BAD])
def test_bad_completion_bodies_are_400(base_url, api_key, model_name, case, override):
    body = {"model": model_name, "prompt": "hello", "max_tokens": 2, **override}
    _assert_error(_post(base_url, "/completions", api_key, json=body), 400)


def test_unknown_route_and_method_are_openai_shaped(base_url, api_key):
    _assert_error(httpx.get(f"{base_url}/nope", timeout=10), 404)
    _assert_error(httpx.get(f"{base_url}/chat/completions", timeout=10), 405)


def test_request_id_is_echoed(base_url, api_key, model_name):
    resp = _post(base_url, "/chat/completions", api_key, json=_chat(model_name), headers={"x-request-id": "my-id-123"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "my-id-123"
    generated = _post(base_url, "/chat/completions", api_key, json=_chat(model_name))
    assert generated.headers["x-request-id"].startswith("req-")


def test_health_ready_and_metrics(stack, base_url, api_key, model_name):
    root = base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{root}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"router": True, "auth": True}
    _post(base_url, "/chat/completions", api_key, json=_chat(model_name))
    text = httpx.get(f"{root}/metrics").text
    series = (f'llmsvc_requests_total{{model="{model_name}",route="/v1/chat/completions",service="gateway",'
              'status="200"}')
    assert series in text
    assert "llmsvc_time_to_first_token_seconds_bucket" in text


def test_curl_default_form_content_type_is_read_as_json(base_url, api_key, model_name):
    """`curl -d` without -H sends application/x-www-form-urlencoded; the body is JSON all the same."""
    import json

    resp = httpx.post(f"{base_url}/chat/completions", content=json.dumps(_chat(model_name)).encode(), timeout=60,
                      headers={"Authorization": f"Bearer {api_key}",
                               "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "chat.completion"


# No silent drops: OpenAI parameters this server does not honour yet, each with a value that asks for
# something. Each is a 400 naming the parameter, code unsupported_parameter, never a 200 that ignores it.
UNSUPPORTED_CHAT = [
    ("functions", {"functions": [{"name": "f", "parameters": {}}]}),
    ("function_call", {"function_call": "auto"}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("prediction", {"prediction": {"type": "content", "content": "x"}}),
    ("reasoning_effort", {"reasoning_effort": "high"}),
    ("verbosity", {"verbosity": "low"}),
    ("web_search_options", {"web_search_options": {}}),
    ("service_tier", {"service_tier": "flex"}),
    ("store", {"store": True}),
    ("messages[1].function_call", {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]}),
]


@pytest.mark.parametrize("param,extra", UNSUPPORTED_CHAT, ids=[p for p, _ in UNSUPPORTED_CHAT])
def test_an_unsupported_chat_parameter_is_400_naming_it(base_url, api_key, model_name, param, extra):
    for stream in (False, True):
        err = _assert_error(_post(base_url, "/chat/completions", api_key,
                                  json={**_chat(model_name, stream=stream), **extra}), 400,
                            code="unsupported_parameter")
        assert err["param"] == param, err


@pytest.mark.parametrize("param,value", [("suffix", "end"), ("best_of", 3)])
def test_an_unsupported_completions_parameter_is_400_naming_it(base_url, api_key, model_name, param, value):
    body = {"model": model_name, "prompt": "hi", "max_tokens": 2, param: value}
    _assert_error(_post(base_url, "/completions", api_key, json=body), 400, code="unsupported_parameter",
                  param=param)


def test_values_that_ask_for_nothing_are_accepted(base_url, api_key, model_name):
    """What clients send by default is not refused: tool_choice none, a text response format,
    an empty logit_bias, store false, metadata, parallel_tool_calls, a prompt cache key (a routing hint:
    one key, one worker) and a safety identifier (read as ``user``)."""
    extra = {"tool_choice": "none", "response_format": {"type": "text"}, "logit_bias": {},
             "store": False, "metadata": {"k": "v"}, "parallel_tool_calls": True, "service_tier": "auto",
             "modalities": ["text"], "prompt_cache_key": "conversation-7", "safety_identifier": "u-1"}
    r = _post(base_url, "/chat/completions", api_key, json={**_chat(model_name), **extra})
    assert r.status_code == 200, r.text
    r = _post(base_url, "/completions", api_key,
              json={"model": model_name, "prompt": "hi", "max_tokens": 2, "best_of": 1, "suffix": None})
    assert r.status_code == 200, r.text
