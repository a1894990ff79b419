"""The Responses API (``/v1/responses``) through the official ``openai`` client, on the real stack.

The session's model is the random tiny Llama: what it says means nothing, so these tests hold the machinery.
A response is generated exactly as the chat completion of the same conversation is: at temperature 0 both
give the same text from the same number of prompt tokens, also for a chain of ``previous_response_id`` and
for a function call answered with ``function_call_output``. Stored state lives in the database behind auth,
so a chain continues on another gateway replica (a second gateway process here). The stream's events come in
OpenAI's order with increasing sequence numbers. Retrieve, delete and ``input_items`` work on stored
responses, a response made with ``store: false`` is not kept, and another owner's id is a 404 on every route.
Each bad input is a 400 naming its parameter. That a trained model calls tools through this API, with the
OpenAI Agents SDK's default (Responses) model, is ``tests/gateway/test_tool_agent.py``'s.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from services.cli.stack import free_port

GET_CITY = {"type": "function", "name": "get_city", "description": "Where someone lives.",
            "parameters": {"type": "object", "properties": {"name": {"type": "string", "enum": ["ann", "bob"]}},
                           "required": ["name"], "additionalProperties": False}}
CHAT_GET_CITY = {"type": "function", "function": {k: v for k, v in GET_CITY.items() if k != "type"}}


@pytest.fixture(scope="module")
def second_gateway(stack):
    """Another gateway replica of the session's stack: its own process and port, the same auth and router."""
    env = stack.env_for("gateway")
    port = free_port()
    env["LLMSVC_GATEWAY_PORT"] = str(port)
    env.pop("LLMSVC_GATEWAY_METRICS_PORT", None)
    proc = stack.spawn("gateway-b", "services.gateway.main", env)
    base = f"http://{stack.cfg.host}:{port}"
    import time

    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.popen.poll() is None, proc.log_path.read_text()[-2000:]
        time.sleep(0.2)
    yield f"{base}/v1"
    proc.popen.terminate()
    proc.popen.wait(timeout=20)
    del stack.procs["gateway-b"]


@pytest.fixture(scope="module")
def client_b(second_gateway, api_key):
    return openai.OpenAI(base_url=second_gateway, api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def other_owner(base_url, api_key):
    """A client whose key belongs to another owner."""
    r = httpx.post(f"{base_url}/admin/keys", json={"name": "responses-bob", "owner": "team-bob",
                                                                        "scopes": ["chat"]},
                   headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert r.status_code == 201, r.text
    return openai.OpenAI(base_url=base_url, api_key=r.json()["key"], max_retries=0, timeout=120)


def _chat(client, model, messages, max_tokens, **kw):
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, **kw)
    return r.choices[0].message, r.usage.prompt_tokens


def test_create_answers_as_chat_does_for_the_same_conversation(openai_client, model_name):
    r = openai_client.responses.create(model=model_name, input="Hello there", instructions="Be brief.",
                                       max_output_tokens=8, temperature=0, metadata={"run": "one"})
    assert r.id.startswith("resp_") and r.object == "response" and r.model == model_name
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # 8 tokens cut it
    assert [o.type for o in r.output] == ["message"] and r.output[0].role == "assistant"
    assert r.usage.output_tokens == 8 and r.usage.total_tokens == r.usage.input_tokens + 8
    assert r.instructions == "Be brief." and r.metadata == {"run": "one"} and r.store is True
    message, prompt_tokens = _chat(openai_client, model_name, [{"role": "system", "content": "Be brief."},
                                                                {"role": "user", "content": "Hello there"}], 8)
    assert r.output_text == message.content
    assert r.usage.input_tokens == prompt_tokens


def test_a_chain_of_three_continues_across_gateway_replicas(openai_client, client_b, model_name):
    """Each turn on another replica than the one before: the store, not a replica's memory, holds the chain.
    The third turn's prompt is the whole conversation (chat of the same messages gives the same text from
    the same prompt tokens); instructions are not carried over."""
    kw = dict(model=model_name, max_output_tokens=6, temperature=0)
    r1 = openai_client.responses.create(input="one", instructions="Count.", **kw)
    r2 = client_b.responses.create(input="two", previous_response_id=r1.id, **kw)
    r3 = openai_client.responses.create(input=[{"role": "user", "content": "three"}], previous_response_id=r2.id,
                                        **kw)
    assert r2.previous_response_id == r1.id and r3.previous_response_id == r2.id
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": r1.output_text},
               {"role": "user", "content": "two"}, {"role": "assistant", "content": r2.output_text},
               {"role": "user", "content": "three"}]
    message, prompt_tokens = _chat(openai_client, model_name, history, 6)
    assert r3.output_text == message.content
    assert r3.usage.input_tokens == prompt_tokens > r2.usage.input_tokens > r1.usage.input_tokens
    assert client_b.responses.retrieve(r3.id).output_text == r3.output_text


def test_the_stream_sends_openai_events_in_order(openai_client, model_name):
    events = list(openai_client.responses.create(model=model_name, input="Stream me", max_output_tokens=6,
                                                 temperature=0, stream=True))
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, last = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.id == last.id
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-4].text == text == last.output_text
    assert last.usage.output_tokens == 6
    stored = openai_client.responses.retrieve(last.id)  # stored before the last event went out
    assert stored.output_text == text and stored.status == "incomplete"
    whole = openai_client.responses.create(model=model_name, input="Stream me", max_output_tokens=6, temperature=0)
    assert whole.output_text == text


def test_a_function_call_and_its_output_continue_as_chat_does(openai_client, model_name):
    """A named ``tool_choice`` makes the model call the function, as chat's call for the same request (a
    random model's arguments run past a small budget: the item is still a function call); its output goes
    back through ``previous_response_id`` and the next turn is chat's turn for the same messages."""
    r = openai_client.responses.create(model=model_name, input="Where does ann live?", tools=[GET_CITY],
                                       tool_choice={"type": "function", "name": "get_city"},
                                       max_output_tokens=24, temperature=0)
    assert [o.type for o in r.output] == ["function_call"]
    call = r.output[0]
    chat_call = _chat(openai_client, model_name, [{"role": "user", "content": "Where does ann live?"}], 24,
                      tools=[CHAT_GET_CITY], tool_choice={"type": "function", "function": {"name": "get_city"}}
                      )[0].tool_calls[0]
    assert call.call_id and (call.name, call.arguments) == (chat_call.function.name, chat_call.function.arguments)
    assert r.tools[0].name == "get_city" and r.tool_choice.name == "get_city"
    nxt = openai_client.responses.create(model=model_name, previous_response_id=r.id, tools=[GET_CITY],
                                         input=[{"type": "function_call_output", "call_id": call.call_id,
                                                 "output": "paris"}], max_output_tokens=5, temperature=0)
    history = [{"role": "user", "content": "Where does ann live?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call.call_id, "type": "function",
                    "function": {"name": "get_city", "arguments": call.arguments}}]},
               {"role": "tool", "tool_call_id": call.call_id, "content": "paris"}]
    message, prompt_tokens = _chat(openai_client, model_name, history, 5, tools=[CHAT_GET_CITY])
    assert nxt.output_text == (message.content or "") and nxt.usage.input_tokens == prompt_tokens


def test_a_streamed_function_call_has_its_argument_events(openai_client, model_name):
    kw = dict(model=model_name, input="Where does bob live?", tools=[GET_CITY], tool_choice="required",
              max_output_tokens=100, temperature=0)
    events = list(openai_client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    n = kinds.count("response.function_call_arguments.delta")
    assert n >= 1 and kinds == ["response.created", "response.in_progress", "response.output_item.added",
                                *["response.function_call_arguments.delta"] * n,
                                "response.function_call_arguments.done", "response.output_item.done",
                                "response.incomplete"]
    added, done = events[2].item, events[-2].item
    assert added.type == done.type == "function_call" and added.name == "get_city" and added.arguments == ""
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert events[-3].arguments == done.arguments == args == events[-1].response.output[0].arguments
    assert openai_client.responses.create(**kw).output[0].arguments == args  # the non-streamed call


def test_json_schema_text_format_gives_valid_json(openai_client, model_name):
    schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["color"], "additionalProperties": False}
    r = openai_client.responses.create(model=model_name, input="A color?", max_output_tokens=100, temperature=0,
                                       text={"format": {"type": "json_schema", "name": "c", "schema": schema,
                                                        "strict": True}})
    assert r.status == "completed" and r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_retrieve_input_items_and_delete(openai_client, model_name):
    items = [{"role": "developer", "content": "Answer."}, {"role": "user", "content": [
        {"type": "input_text", "text": "first "}, {"type": "input_text", "text": "part"}]}]
    r = openai_client.responses.create(model=model_name, input=items, max_output_tokens=3, temperature=0)
    got = openai_client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    listed = openai_client.responses.input_items.list(r.id)
    assert [(i.role, i.content[0].text) for i in listed.data] == [("user", "first part"), ("developer", "Answer.")]
    asc = openai_client.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.role for i in asc.data] == ["developer"] and asc.has_more
    after = openai_client.responses.input_items.list(r.id, order="asc", after=asc.data[0].id)
    assert [i.role for i in after.data] == ["user"] and not after.has_more
    assert openai_client.responses.delete(r.id) is None  # the SDK returns nothing for a 200
    for call in (openai_client.responses.retrieve, openai_client.responses.delete,
                 openai_client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call(r.id)
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.responses.create(model=model_name, input="on", previous_response_id=r.id, max_output_tokens=2)
    assert err.value.body["param"] == "previous_response_id"


def test_store_false_is_not_kept(openai_client, model_name):
    r = openai_client.responses.create(model=model_name, input="forget me", store=False, max_output_tokens=2)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.create(model=model_name, input="on", previous_response_id=r.id, max_output_tokens=2)


def test_another_owner_gets_404_on_every_route(openai_client, other_owner, model_name):
    r = openai_client.responses.create(model=model_name, input="mine", max_output_tokens=2)
    for call in (other_owner.responses.retrieve, other_owner.responses.delete,
                 other_owner.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call(r.id)
    with pytest.raises(openai.NotFoundError) as err:
        other_owner.responses.create(model=model_name, input="yours?", previous_response_id=r.id,
                                     max_output_tokens=2)
    assert err.value.body["param"] == "previous_response_id"
    assert openai_client.responses.retrieve(r.id).output_text == r.output_text  # unharmed
    theirs = other_owner.responses.create(model=model_name, input="bob's", max_output_tokens=2)
    assert other_owner.responses.retrieve(theirs.id).id == theirs.id
    assert openai_client.responses.retrieve(theirs.id).id == theirs.id  # the session's key is an admin key


BAD = [
    ("model", {"input": "x"}),
    ("input", {"input": []}),
    ("input", {"input": ""}),
    ("input[0]", {"input": ["text"]}),
    ("input[0].type", {"input": [{"type": "reasoning", "summary": []}]}),
    ("input[0].type", {"input": [{"content": "no role or type"}]}),
    ("input[0].role", {"input": [{"role": "tool", "content": "x"}]}),
    ("input[0].content", {"input": [{"role": "user"}]}),
    ("input[0].content[0].type", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}),
    ("input[0].content[0].type", {"input": [{"role": "user", "content": [{"type": "html", "text": "x"}]}]}),
    ("input[0].call_id", {"input": [{"type": "function_call_output", "output": "x"}]}),
    ("input[0].name", {"input": [{"type": "function_call", "call_id": "c1", "arguments": "{}"}]}),
    ("tools[0].type", {"input": "x", "tools": [{"type": "web_search"}]}),
    ("tools[0].parameters", {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": 5}}]}),
    ("tools", {"input": "x", "tools": [GET_CITY, GET_CITY]}),
    ("tool_choice", {"input": "x", "tools": [GET_CITY], "tool_choice": {"type": "function", "name": "other"}}),
    ("tool_choice", {"input": "x", "tool_choice": "required"}),
    ("text.format.schema", {"input": "x", "text": {"format": {"type": "json_schema", "name": "s",
                                                              "schema": {"type": "nope"}}}}),
    ("text.verbosity", {"input": "x", "text": {"verbosity": "low"}}),
    ("max_output_tokens", {"input": "x", "max_output_tokens": 0}),
    ("temperature", {"input": "x", "temperature": 3}),
    ("metadata", {"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}),
    ("background", {"input": "x", "background": True}),
    ("include", {"input": "x", "include": ["reasoning.encrypted_content"]}),
    ("reasoning", {"input": "x", "reasoning": {"effort": "low"}}),
    ("truncation", {"input": "x", "truncation": "auto"}),
    ("conversation", {"input": "x", "conversation": "conv_1"}),
    ("prompt", {"input": "x", "prompt": {"id": "pmpt_1"}}),
    ("top_logprobs", {"input": "x", "top_logprobs": 3}),
    ("max_tool_calls", {"input": "x", "max_tool_calls": 2}),
    ("stream_options.include_obfuscation", {"input": "x", "stream": True,
                                            "stream_options": {"include_obfuscation": True}}),
]


@pytest.mark.parametrize(("param", "body"), BAD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD)])
def test_each_bad_input_is_a_400_naming_it(base_url, api_key, model_name, param, body):
    body = {"model": model_name, **body} if param != "model" else body
    r = httpx.post(f"{base_url}/responses", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_unknown_ids_are_404_and_a_bad_after_is_400(openai_client, model_name):
    for call in (openai_client.responses.retrieve, openai_client.responses.delete,
                 openai_client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call("resp_nothing")
    r = openai_client.responses.create(model=model_name, input="x", max_output_tokens=1)
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.input_items.list(r.id, after="msg_not_here")
    assert err.value.body["param"] == "after"
