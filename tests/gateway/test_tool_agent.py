"""A trained model calls tools: ``tool_choice: auto`` on held-out prompts, a real agent loop, the README's code.

The model is tiny-chat trained here by its own recipe on its tool tasks only (``tool_math``, ``tool_city``,
``tool_direct``: a quick build of 500 steps, about two minutes on two cores), served by the real stack with vLLM's
``hermes`` parser, which its ``llmsvc.json`` names. Under ``auto`` it must choose the right function with
the right arguments, read the tool's result and answer with it, and answer the other tasks directly.
The agent loop is the OpenAI Agents SDK's chat-completions model, unchanged, pointed at llmsvc.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from pathlib import Path

import openai
import pytest

from services.cli.stack import Stack, StackConfig
from trainer.data import synthetic

MODEL_CACHE = Path(os.environ.get("LLMSVC_TEST_CACHE", Path.home() / ".cache" / "llmsvc-test"))
MODEL = "tiny-chat"
QUICK_BUILD = {"hyperparameters": {"steps": 500},
               "tiny_chat": {"tasks": ["tool_math", "tool_city", "tool_direct"], "examples": 30_000,
                             "eval_per_task": 0, "induction_steps": 0}}
README = Path(__file__).resolve().parents[2] / "README.md"


def _source_tag() -> str:
    """What the model is made from: the recipe's code and the build's settings (a changed one rebuilds)."""
    import hashlib

    root = Path(__file__).resolve().parents[2] / "trainer"
    h = hashlib.sha256(json.dumps(QUICK_BUILD, sort_keys=True).encode())
    for path in sorted(root.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


@pytest.fixture(scope="module")
def tool_model() -> Path:
    from trainer.tiny_chat import build

    out = MODEL_CACHE / f"tools-{_source_tag()}" / MODEL
    if not (out / "config.json").exists():
        build(out, overrides=QUICK_BUILD)
    meta = json.loads((out / "llmsvc.json").read_text())
    assert meta["tool_parser"] == "hermes"
    return out


def _port_8000_or_free(fallback: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8000))
        except OSError:
            return fallback
    return 8000


@pytest.fixture(scope="module")
def tool_stack(tmp_path_factory, tool_model):
    key = "sk-tools-" + secrets.token_hex(12)
    # With the embedding worker `llmsvc up` runs (tiny-chat-embed), for the README's embeddings example.
    cfg = StackConfig.ephemeral(tmp_path_factory.mktemp("tools"), tool_model, key, embeddings=True)
    # On 127.0.0.1:8000, where `llmsvc up` serves and the README's "Talk to it" examples call, when it is free.
    cfg.gateway_port = _port_8000_or_free(cfg.gateway_port)
    with Stack(cfg).running() as stack:
        yield stack


@pytest.fixture(scope="module")
def client(tool_stack):
    return openai.OpenAI(base_url=tool_stack.cfg.base_url, api_key=tool_stack.cfg.api_key, max_retries=0,
                         timeout=120)


def _tools(names) -> list[dict]:
    return [synthetic.TOOLS[n] for n in names]


def _items(n: int) -> list[dict]:
    """Arithmetic prompts the training set never had, and "where does X live?" for the tables' people (a
    quick build copies made-up names poorly; the full model's figures for both are in docs/benchmarks.md).
    Every question about a person is in the training set, so the tool here answers with another city than
    the one training taught: the final answer must come from this result, not from memory."""
    import random

    tc = QUICK_BUILD["tiny_chat"]
    train = {p for _, p, _ in synthetic.examples(tc["examples"], 0, tc["tasks"])}
    rng = random.Random("agent-test")
    out = []
    while len(out) < n:
        item = synthetic.tool_math(rng)
        if item["prompt"] not in train:
            out.append(item | {"result": synthetic.run_tool(item["call"]["name"], item["call"]["arguments"])})
    for name in rng.sample(synthetic.NAMES, n):
        taught = synthetic.get_city(name)
        other = rng.choice([c for c in synthetic.CITIES if c != taught])
        out.append({"prompt": f"Where does {name} live?", "tools": synthetic._offer(rng, ["get_city"]),
                    "call": {"name": "get_city", "arguments": {"name": name}}, "result": other})
    return out


def test_auto_calls_the_right_function_then_answers_from_its_result(client):
    items = _items(6)
    right_call = right_answer = 0
    wrong = []
    for item in items:
        messages = [{"role": "user", "content": item["prompt"]}]
        tools = _tools(item["tools"])
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="auto",
                                           max_tokens=48, temperature=0)
        msg = r.choices[0].message
        if not msg.tool_calls:
            wrong.append((item["prompt"], msg.content))
            continue
        call = msg.tool_calls[0]
        args = json.loads(call.function.arguments)
        if call.function.name == item["call"]["name"] and args == item["call"]["arguments"]:
            right_call += 1
        else:
            wrong.append((item["prompt"], call.function.name, args))
        assert r.choices[0].finish_reason == "tool_calls"
        messages += [msg.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": item["result"]}]
        final = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=16,
                                               temperature=0).choices[0]
        assert final.message.tool_calls is None
        right_answer += final.message.content.strip() == item["result"]
    assert right_call >= len(items) - 1, f"{right_call}/{len(items)} right calls; wrong: {wrong}"
    assert right_answer >= len(items) - 1, f"{right_answer}/{len(items)} answers from the tool's result"


def test_auto_answers_directly_when_no_tool_fits(client):
    """Tools offered that do not fit the question: no call, a text answer (whose quality is the full
    model's to show, docs/benchmarks.md; this quick build learns the tool tasks first)."""
    for prompt in ("Reverse: abcd", "Sort: 3 1 2", "Repeat: red cat"):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                           tools=_tools(["get_city"]), max_tokens=16, temperature=0)
        assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop", r
        assert r.choices[0].message.content


def test_auto_streamed_gives_the_non_streamed_call(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "What is 41 + 23?"}],
              tools=_tools(["add", "subtract"]), max_tokens=48, temperature=0)
    full = client.chat.completions.create(**kw).choices[0]
    name, args, ids, finish = None, "", [], None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or ():
                if tc.id:
                    ids.append(tc.id)
                    name = tc.function.name
                args += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == full.finish_reason == "tool_calls" and len(ids) == 1
    assert (name, args) == (full.message.tool_calls[0].function.name, full.message.tool_calls[0].function.arguments)
    assert json.loads(args) == {"a": 41, "b": 23}


def test_an_agents_sdk_agent_runs_a_two_step_tool_loop(tool_stack):
    """The OpenAI Agents SDK (chat-completions model) against llmsvc: it offers the tool, runs the call the
    model makes, sends the result back and takes the model's final answer."""
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def add(a: int, b: int) -> int:
        """a + b"""
        calls.append((a, b))
        return a + b

    aclient = openai.AsyncOpenAI(base_url=tool_stack.cfg.base_url, api_key=tool_stack.cfg.api_key, max_retries=0)
    agent = Agent(name="calculator", model=OpenAIChatCompletionsModel(model=MODEL, openai_client=aclient),
                  tools=[add], model_settings=ModelSettings(temperature=0, max_tokens=48))
    result = asyncio.run(Runner.run(agent, "What is 35 + 47?", max_turns=4))
    assert calls == [(35, 47)]
    assert result.final_output.strip() == "82"


def test_the_readme_tool_call_example_runs_as_written(client):
    text = README.read_text()
    section = text[text.index("### Tool calls and structured outputs"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {"client": client}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    call = scope["call"]
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 12, "b": 7}
    assert scope["r"].choices[0].finish_reason == "tool_calls"


def test_an_agents_sdk_agent_on_its_default_responses_model_runs_the_tool_loop(tool_stack):
    """The Agents SDK's default model speaks the Responses API: the same two-step loop through /v1/responses
    (the SDK sends the whole history each turn: the model's function_call item and the tool's output)."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def add(a: int, b: int) -> int:
        """a + b"""
        calls.append((a, b))
        return a + b

    aclient = openai.AsyncOpenAI(base_url=tool_stack.cfg.base_url, api_key=tool_stack.cfg.api_key, max_retries=0)
    agent = Agent(name="calculator", model=OpenAIResponsesModel(model=MODEL, openai_client=aclient),
                  tools=[add], model_settings=ModelSettings(temperature=0, max_tokens=48))
    result = asyncio.run(Runner.run(agent, "What is 35 + 47?", max_turns=4))
    assert calls == [(35, 47)]
    assert result.final_output.strip() == "82"


def test_responses_call_a_tool_and_answer_from_its_output_through_previous_response_id(client):
    """The right call through /v1/responses, and the answer taken from the tool's output, which is sent as
    a function_call_output item continuing the stored response."""
    items = _items(3)
    right = 0
    for item in items:
        tools = [{"type": "function", **t["function"]} for t in _tools(item["tools"])]
        r = client.responses.create(model=MODEL, input=item["prompt"], tools=tools, max_output_tokens=48,
                                    temperature=0)
        assert [o.type for o in r.output] == ["function_call"], r.output
        call = r.output[0]
        if (call.name, json.loads(call.arguments)) != (item["call"]["name"], item["call"]["arguments"]):
            continue
        final = client.responses.create(model=MODEL, previous_response_id=r.id, tools=tools, max_output_tokens=16,
                                        temperature=0, input=[{"type": "function_call_output",
                                                               "call_id": call.call_id, "output": item["result"]}])
        assert [o.type for o in final.output] == ["message"] and final.status == "completed"
        right += final.output_text.strip() == item["result"]
    assert right >= len(items) - 1, f"{right}/{len(items)} right calls answered from the tool's output"


def test_the_readme_responses_example_runs_as_written(client):
    text = README.read_text()
    section = text[text.index("### Responses API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {"client": client}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["call"].name == "add" and json.loads(scope["call"].arguments) == {"a": 12, "b": 7}
    assert scope["r"].output_text.strip() == "19"
    assert client.responses.retrieve(scope["r"].id).previous_response_id == scope["first"].id


def test_the_readme_embeddings_example_runs_as_written(client, capsys):
    text = README.read_text()
    section = text[text.index("### Embeddings"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {"client": client}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    e = scope["e"]
    assert e.model == "tiny-chat-embed" and [d.index for d in e.data] == [0, 1]
    assert len(e.data[0].embedding) == len(e.data[1].embedding) > 1 and e.data[0].embedding != e.data[1].embedding
    assert capsys.readouterr().out.split() == ["2", str(len(e.data[0].embedding)), str(e.usage.prompt_tokens)]


def test_the_readme_batch_example_runs_as_written(client, capsys):
    text = README.read_text()
    section = text[text.index("### Batches"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {"client": client}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    batch = scope["batch"]
    assert batch.status == "completed" and batch.endpoint == "/v1/chat/completions" and batch.model == "tiny-chat"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 6, 0)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in printed] == [f"q{i}" for i in range(6)]  # input order


def _talk_to_it(stack, lang: str) -> str:
    """The "Talk to it" block, as written; only if port 8000 was taken on this machine (the stack then serves
    elsewhere) is its address replaced, the one change."""
    from tests.readme import block

    text = block("## Talk to it", lang).text
    assert "127.0.0.1:8000" in text
    return text.replace("127.0.0.1:8000", f"127.0.0.1:{stack.cfg.gateway_port}")


def test_the_readme_curl_line_streams_a_chat(tool_stack):
    import subprocess

    r = subprocess.run(["bash", "-c", _talk_to_it(tool_stack, "bash")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "KEY": tool_stack.cfg.api_key})
    assert r.returncode == 0, r.stderr
    events = [line.removeprefix("data: ") for line in r.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and chunks[0]["model"] == "tiny-chat"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).strip()  # it said something


def test_the_readme_python_client_streams_a_chat(tool_stack, capsys):
    code = _talk_to_it(tool_stack, "python")
    exec(compile(code, "README.md", "exec"), {"KEY": tool_stack.cfg.api_key})  # noqa: S102 - the README's example
    assert capsys.readouterr().out.strip()  # the streamed reply, printed as it came
