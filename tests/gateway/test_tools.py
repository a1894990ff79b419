"""Tool calls, structured outputs and logit_bias through the official ``openai`` client, on the real stack.

The session's model is the random tiny Llama served by real vLLM with the ``hermes`` tool parser (its
``llmsvc.json`` names it). A random model says nothing useful, so what these tests hold is the machinery:
``required`` and a named ``tool_choice`` are decoded under vLLM's structural tag, so every call is
well-formed and its arguments validate against the function's schema; the streamed pieces have OpenAI's
exact shape and add up to the non-streamed call at the same seed; JSON schemas hold at temperature 1; and
each bad input is a 400 naming its parameter. That a trained model calls the right function and answers
from its result is ``tests/gateway/test_tool_agent.py``'s.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                    "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                   "required": ["a", "b"], "additionalProperties": False}}}
GET_CITY = {"type": "function", "function": {
    "name": "get_city", "description": "Where someone lives.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string", "enum": ["ann", "bob", "cid"]}},
                   "required": ["name"], "additionalProperties": False}}}
TOOLS = [ADD, GET_CITY]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is 12 + 7?"}]
# Room for a random model's whitespace inside the grammar: it still has to close every call.
MAX_TOKENS = 400


def _valid_call(call) -> dict:
    """A call of an offered function whose arguments parse and validate; returns the arguments."""
    assert call.type == "function" and call.id
    assert call.function.name in SCHEMAS, call
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


def _streamed(client, **kw):
    """(role events, content, calls by index as {id, type, name, arguments}, finish reasons, raw tool deltas)."""
    roles, content, calls, finishes, pieces = [], [], {}, [], []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            d = ch.delta
            if d.role:
                roles.append(d.role)
            if d.content:
                content.append(d.content)
            for tc in d.tool_calls or ():
                pieces.append(tc)
                call = calls.setdefault(tc.index, {"id": None, "type": None, "name": None, "arguments": ""})
                if tc.id is not None:
                    assert call["id"] is None, "a call's id comes once"
                    call.update(id=tc.id, type=tc.type, name=tc.function.name)
                else:
                    assert tc.type is None and (tc.function is None or tc.function.name is None), \
                        "type and name come only with the id, in a call's first piece"
                call["arguments"] += (tc.function.arguments or "") if tc.function else ""
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    return roles, "".join(content), calls, finishes, pieces


def test_named_tool_choice_streamed_and_not_give_the_same_valid_call(openai_client, model_name):
    kw = dict(model=model_name, messages=ASK, tools=TOOLS, max_tokens=MAX_TOKENS, temperature=1.0, seed=11,
              tool_choice={"type": "function", "function": {"name": "add"}})
    full = openai_client.chat.completions.create(**kw)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "add"
    args = _valid_call(call)

    roles, content, calls, finishes, pieces = _streamed(openai_client, **kw)
    assert roles == ["assistant"] and content == "" and finishes == ["tool_calls"]
    assert list(calls) == [0] and calls[0]["type"] == "function" and calls[0]["name"] == "add"
    assert calls[0]["id"].startswith("chatcmpl-tool-")
    assert json.loads(calls[0]["arguments"]) == args
    assert len(pieces) >= 2, "the arguments come in pieces after the call's first delta"


def test_required_with_parallel_calls_off_makes_exactly_one_valid_call(openai_client, model_name):
    for seed in (1, 2, 3):
        r = openai_client.chat.completions.create(model=model_name, messages=ASK, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=MAX_TOKENS, temperature=1.0,
                                                  seed=seed)
        assert r.choices[0].finish_reason == "tool_calls", r
        assert len(r.choices[0].message.tool_calls) == 1
        _valid_call(r.choices[0].message.tool_calls[0])


def test_required_streamed_calls_validate_and_match_the_response(openai_client, model_name):
    kw = dict(model=model_name, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS,
              temperature=1.0, seed=5)
    full = openai_client.chat.completions.create(**kw).choices[0]
    _, _, calls, finishes, _ = _streamed(openai_client, **kw)
    assert finishes == [full.finish_reason]
    if full.finish_reason == "tool_calls":  # every complete call validates; a cut-off one would say "length"
        assert [c.function.name for c in full.message.tool_calls] == [calls[i]["name"] for i in sorted(calls)]
        for c in full.message.tool_calls:
            _valid_call(c)
        assert [json.loads(c.function.arguments) for c in full.message.tool_calls] == \
            [json.loads(calls[i]["arguments"]) for i in sorted(calls)]


def test_parallel_calls_have_their_own_index_and_id_streamed_and_not(openai_client, model_name):
    """``required`` with parallel calls allowed (the default): the grammar lets the model go on to another
    call after each one. Among a few seeds the random model makes several; each is valid, with its own id,
    and the stream numbers them 0, 1, … in order."""
    several = None
    for seed in range(1, 13):
        kw = dict(model=model_name, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS,
                  temperature=1.0, seed=seed)
        r = openai_client.chat.completions.create(**kw).choices[0]
        if r.finish_reason == "tool_calls" and len(r.message.tool_calls) >= 2:
            several = (kw, r)
            break
    assert several is not None, "no seed gave parallel calls"
    kw, r = several
    calls = r.message.tool_calls
    assert len({c.id for c in calls}) == len(calls)
    for c in calls:
        _valid_call(c)
    _, _, streamed, finishes, pieces = _streamed(openai_client, **kw)
    assert finishes == ["tool_calls"] and sorted(streamed) == list(range(len(calls)))
    assert [p.index for p in pieces] == sorted(p.index for p in pieces), "calls stream one after another"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [(streamed[i]["name"], json.loads(streamed[i]["arguments"])) for i in range(len(calls))]


def test_tool_choice_none_answers_in_text(openai_client, model_name):
    r = openai_client.chat.completions.create(model=model_name, messages=ASK, tools=TOOLS, tool_choice="none",
                                              max_tokens=8, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_a_conversation_with_tool_results_is_carried_to_the_template(openai_client, model_name, base_url, api_key):
    """An assistant turn's calls and the tool turns answering them reach the model's chat template, with the
    offered tools: ``/tokenize`` renders the same conversation the chat route does, and what it renders
    holds each of them. The chat request with that history is served."""
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 12, "b": 7}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_city", "arguments": '{"name": "ann"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "19"},
        {"role": "tool", "tool_call_id": "call_2", "content": "paris"},
    ]
    root = base_url.removesuffix("/v1")
    auth = {"Authorization": f"Bearer {api_key}"}
    ids = httpx.post(f"{root}/tokenize", json={"model": model_name, "messages": history, "tools": TOOLS},
                     headers=auth, timeout=60).json()["tokens"]
    text = httpx.post(f"{root}/detokenize", json={"model": model_name, "tokens": ids}, headers=auth,
                      timeout=60).json()["prompt"]
    for piece in ("<tools>\nadd(a, b)\nget_city(name)\n</tools>",
                  '<tool_call>{"name": "add", "arguments": {"a": 12, "b": 7}}</tool_call>'
                  '<tool_call>{"name": "get_city", "arguments": {"name": "ann"}}</tool_call>',
                  "<|im_start|>tool\n19<|im_end|>", "<|im_start|>tool\nparis<|im_end|>"):
        assert piece in text, (piece, text)
    assert text.endswith("<|im_start|>assistant\n")
    r = openai_client.chat.completions.create(model=model_name, messages=history, tools=TOOLS, max_tokens=2)
    assert r.usage.prompt_tokens == len(ids)


def test_json_schema_samples_at_temperature_one_all_validate(openai_client, model_name):
    schema = {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["paris", "rome", "oslo"]},
        "sum": {"type": "integer", "minimum": 0, "maximum": 198},
        "sure": {"type": "boolean"}}, "required": ["city", "sum", "sure"], "additionalProperties": False}
    outputs = []
    for seed in (1, 2):
        r = openai_client.chat.completions.create(
            model=model_name, messages=ASK, n=10, temperature=1.0, seed=seed, max_tokens=MAX_TOKENS,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                                    "strict": True}})
        outputs += [c.message.content for c in r.choices if c.finish_reason == "stop"]
    assert len(outputs) >= 18, "nearly every sample closes its object within the budget"
    for text in outputs:
        jsonschema.validate(json.loads(text), schema)
    assert len(set(outputs)) > 1, "temperature 1 samples, not one forced string"


def test_json_object_gives_a_json_object(openai_client, model_name):
    """A random model's greedy path can circle inside an open object; sampled ones close it."""
    r = openai_client.chat.completions.create(model=model_name, messages=ASK, response_format={"type": "json_object"},
                                              max_tokens=MAX_TOKENS, temperature=1.0, seed=4, n=6)
    closed = [c.message.content for c in r.choices if c.finish_reason == "stop"]
    assert closed
    for text in closed:
        assert isinstance(json.loads(text), dict)
    for c in r.choices:
        assert c.message.content.lstrip().startswith("{")


class Answer(BaseModel):
    city: Literal["paris", "rome", "oslo"]
    sure: bool


def test_parse_with_a_pydantic_model(openai_client, model_name):
    """``parse`` sends the model's strict JSON schema and reads the reply back into it. The client refuses
    a reply cut off by max_tokens, which a random model's whitespace can cause, so a few seeds are tried."""
    parsed = []
    for seed in range(1, 6):
        try:
            r = openai_client.chat.completions.parse(model=model_name, messages=ASK, response_format=Answer,
                                                     max_tokens=MAX_TOKENS, temperature=1.0, seed=seed)
        except openai.LengthFinishReasonError:
            continue
        parsed.append(r.choices[0].message.parsed)
    assert parsed and all(isinstance(p, Answer) for p in parsed)


def test_structured_outputs_extension_choice_and_regex(openai_client, model_name):
    r = openai_client.chat.completions.create(model=model_name, messages=ASK, max_tokens=10, temperature=1.0, n=8,
                                              seed=3, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert {c.message.content for c in r.choices} <= {"yes", "no"}
    r = openai_client.completions.create(model=model_name, prompt="Code:", max_tokens=10, temperature=1.0, n=4,
                                         seed=3, extra_body={"structured_outputs": {"regex": "[0-9]{3}"}})
    for c in r.choices:
        assert len(c.text) == 3 and c.text.isdigit(), c.text


def test_logit_bias_steers_and_bans_tokens(openai_client, model_name, tokenizer):
    token = tokenizer.convert_tokens_to_ids("Ġ7") if "Ġ7" in tokenizer.get_vocab() else 300
    text = tokenizer.decode([token])
    r = openai_client.chat.completions.create(model=model_name, messages=ASK, max_tokens=6, temperature=1.0, seed=1,
                                              logit_bias={str(token): 100})
    assert r.choices[0].message.content == text * 6
    greedy = openai_client.chat.completions.create(model=model_name, messages=ASK, max_tokens=1, temperature=0,
                                                   logprobs=True)
    first = greedy.choices[0].logprobs.content[0].token
    first_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(first))[0]
    banned = openai_client.chat.completions.create(model=model_name, messages=ASK, max_tokens=1, temperature=0,
                                                   logit_bias={str(first_id): -100})
    assert banned.choices[0].message.content != greedy.choices[0].message.content
    c = openai_client.completions.create(model=model_name, prompt="hi", max_tokens=3, temperature=1.0, seed=2,
                                         logit_bias={str(token): 100})
    assert c.choices[0].text == text * 3


def _error(base_url, api_key, body: dict, path: str = "/chat/completions") -> dict:
    r = httpx.post(f"{base_url}{path}", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)
    assert r.status_code == 400, r.text
    return r.json()["error"]


BAD = [
    # malformed tool schemas
    ("tools[0].function.parameters", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "nonsense"}}}]}),
    ("tools[0].function.name", {"tools": [{"type": "function", "function": {"name": "two words"}}]}),
    ("tools[0].function", {"tools": [{"type": "function"}]}),
    ("tools[0].type", {"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
    ("tools", {"tools": []}),
    ("tools", {"tools": [ADD, ADD]}),
    # tool_choice naming an unknown tool, or asking for a call with nothing to call
    ("tool_choice", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "subtract"}}}),
    ("tool_choice", {"tool_choice": "required"}),
    ("tool_choice", {"tools": TOOLS, "tool_choice": "sometimes"}),
    # tool messages and calls in the history
    ("messages[1].tool_call_id", {"messages": ASK + [{"role": "tool", "content": "19"}]}),
    ("messages[1].tool_call_id", {"messages": ASK + [{"role": "user", "content": "x", "tool_call_id": "c"}]}),
    ("messages[0].tool_calls", {"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
    ("messages[1].tool_calls[0].function.arguments", {"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f"}}]}]}),
    # invalid JSON schemas and formats
    ("response_format.json_schema.schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": 5}}}}}}),
    ("response_format.json_schema.name", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "not ok", "schema": {}}}}),
    ("response_format", {"response_format": {"type": "xml"}}),
    # a valid JSON Schema no grammar can satisfy: the engine's compiler refuses it
    ("response_format", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}}),
    ("response_format", {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}),
    ("structured_outputs", {"structured_outputs": {"regex": "a+", "choice": ["x"]}}),
    ("structured_outputs", {"structured_outputs": {"grammar": "root ::= ((("}}),
    # logit_bias: keys are token ids in the vocabulary, values in [-100, 100]
    ("logit_bias", {"logit_bias": {"99999999": 5}}),
    ("logit_bias.abc", {"logit_bias": {"abc": 5}}),
    ("logit_bias[5]", {"logit_bias": {"5": 101}}),
    # image parts for a text model
    ("messages[0].content[0].type", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
]


@pytest.mark.parametrize("param,extra", BAD, ids=[f"{i}-{p}" for i, (p, _) in enumerate(BAD)])
def test_bad_tool_and_format_input_is_400_naming_it(base_url, api_key, model_name, param, extra):
    for stream in (False, True):
        body = {"model": model_name, "messages": ASK, "max_tokens": 4, "stream": stream, **extra}
        err = _error(base_url, api_key, body)
        assert err["param"] == param, err
        assert err["type"] == "invalid_request_error" and err["message"]


def test_the_client_sees_a_bad_schema_as_bad_request(openai_client, model_name):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model=model_name, messages=ASK, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"required": "a"}}}])
    assert info.value.body["param"] == "tools[0].function.parameters"
