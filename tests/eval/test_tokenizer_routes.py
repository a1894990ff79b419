"""The tokenizer routes in vLLM's shapes, and what lm-evaluation-harness's remote backend makes of them."""

from __future__ import annotations

import httpx
from transformers import AutoTokenizer


def test_tokenize_detokenize_round_trip(gw, lifecycle, eval_models):
    tok = AutoTokenizer.from_pretrained(eval_models["v1"])
    text = "What is 12 + 30?"
    r = gw.post("/tokenize", json={"model": lifecycle["alias"], "prompt": text, "add_special_tokens": False,
                                   "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tok(text, add_special_tokens=False).input_ids
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] > 0
    assert body["token_strs"] == tok.convert_ids_to_tokens(body["tokens"])
    back = gw.post("/detokenize", json={"model": lifecycle["alias"], "tokens": body["tokens"]}).json()
    assert back == {"prompt": text}


def test_tokenizer_info_has_special_tokens_and_template(gw, lifecycle, eval_models):
    tok = AutoTokenizer.from_pretrained(eval_models["v1"])
    info = gw.get("/tokenizer_info", params={"model": lifecycle["v1"]}).json()
    assert info["eos_token"] == tok.eos_token and info["bos_token"] == tok.bos_token
    assert info["chat_template"] == tok.chat_template
    assert info["tokenizer_class"]


def test_tokenizer_routes_require_a_key(eval_stack):
    c = eval_stack.cfg
    r = httpx.post(f"http://{c.host}:{c.gateway_port}/tokenize", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_lm_eval_detects_our_remote_tokenizer(eval_stack, api_key):
    """lm-eval's own probe (``tokenizer_backend=auto``): /tokenizer_info with eos_token, then /tokenize."""
    from lm_eval.utils import check_remote_tokenizer_support

    c = eval_stack.cfg
    assert check_remote_tokenizer_support(f"http://{c.host}:{c.gateway_port}/v1/completions", auth_token=api_key)


def test_echo_logprobs_as_local_completions_expects(gw, lifecycle, eval_models):
    """lm-eval's loglikelihood payload: token ids, echo, logprobs=1, max_tokens=1; and max_tokens=0."""
    from . import models as m

    tok = AutoTokenizer.from_pretrained(eval_models["v1"])
    ids = tok("the river ran past the mill", add_special_tokens=False).input_ids
    body = {"model": lifecycle["v1"], "prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0}
    choice = gw.post("/v1/completions", json=body).json()["choices"][0]
    lps = choice["logprobs"]
    assert len(lps["token_logprobs"]) == len(ids) + 1 and lps["token_logprobs"][0] is None
    ref = m.reference_logprobs(eval_models["v1"], ids)
    for got, want in zip(lps["token_logprobs"][1:len(ids)], ref, strict=True):
        assert abs(got - want) < 1e-3
    assert all(len(top) >= 1 for top in lps["top_logprobs"][1:])
    zero = gw.post("/v1/completions", json={**body, "max_tokens": 0}).json()
    assert zero["choices"][0]["logprobs"]["token_logprobs"] == lps["token_logprobs"][: len(ids)]
    assert zero["usage"]["completion_tokens"] == 0
