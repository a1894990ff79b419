"""The tiny-chat recipe: its synthetic corpus, and ``trainer.tiny_chat.build`` as ``llmsvc up`` calls it.

The full build (1,000 steps, a few minutes) is measured by ``bench/train_tiny_chat.py``; here a
shortened build checks the contract: progress, atomic publication, recorded accuracy, no leftovers.
"""

from __future__ import annotations

import itertools
import json
import re

from trainer.data import synthetic
from trainer.data.chat import validate_record
from trainer.data.tokenizer import byte_tokenizer


def test_corpus_is_deterministic_and_held_out_prompts_are_unseen(tmp_path):
    a = synthetic.write_corpus(tmp_path / "a.jsonl", 3000, seed=4)
    b = synthetic.write_corpus(tmp_path / "b.jsonl", 3000, seed=4)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text() and a == b
    items = synthetic.held_out(20, seed=4, exclude=a)
    assert {i["task"] for i in items} == set(synthetic.ALL_TASKS) - {"greet"}
    assert len(items) == 20 * 9 and not {i["prompt"] for i in items} & a
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    shapes = {tuple(m["role"] for m in r["messages"]) for r in records}
    assert shapes == {("user", "assistant"), ("user", "assistant", "tool", "assistant")}
    assert all(validate_record(r, "corpus") for r in records[:500])  # OpenAI's fine-tuning format, tools included


def test_tool_conversations_call_the_right_tool_and_answer_with_its_real_result():
    import random

    rng = random.Random(2)
    for _ in range(200):
        it = synthetic.tool_math(rng)
        a, op, b = it["prompt"][len("What is "):-1].split(" ")
        assert it["call"] == {"name": "add" if op == "+" else "subtract", "arguments": {"a": int(a), "b": int(b)}}
        assert it["result"] == it["answer"] == str(eval(f"{a} {op} {b}"))  # noqa: S307 (our own expression)
        assert it["call"]["name"] in it["tools"]
        it = synthetic.tool_city(rng)
        name = it["prompt"].split(" ")[2]
        assert it["call"] == {"name": "get_city", "arguments": {"name": name}} and "get_city" in it["tools"]
        assert it["result"] == it["answer"] and it["result"] in synthetic.CITIES and "|" not in it["prompt"]
        it = synthetic.tool_direct(rng)
        assert it["call"] is None and it["tools"]
        if it["prompt"].startswith("What is"):
            assert it["tools"] == ["get_city"]  # arithmetic is answered directly only when no math tool is offered
    rec = synthetic.record({"task": "tool_city", "prompt": "Where does kibo live?", "answer": "oslo",
                            "tools": ["add", "get_city"], "call": {"name": "get_city", "arguments": {"name": "kibo"}},
                            "result": "oslo"})
    tok = byte_tokenizer(synthetic.TOKEN_WORDS)
    text = tok.apply_chat_template(rec["messages"], tools=rec["tools"], tokenize=False)
    assert text == ("<|begin_of_text|><|im_start|>system\n<tools>\nadd(a, b)\nget_city(name)\n</tools><|im_end|>\n"
                    "<|im_start|>user\nWhere does kibo live?<|im_end|>\n<|im_start|>assistant\n<tool_call>"
                    '{"name": "get_city", "arguments": {"name": "kibo"}}</tool_call><|im_end|>\n'
                    "<|im_start|>tool\noslo<|im_end|>\n<|im_start|>assistant\noslo<|im_end|>\n")


def test_grading_needs_the_exact_call_then_the_exact_answer():
    call = '<tool_call>{"name": "add", "arguments": {"a": 12, "b": 7}}</tool_call>'
    item = {"task": "tool_math", "prompt": "What is 12 + 7?", "answer": "19", "tools": ["add"],
            "call": {"name": "add", "arguments": {"a": 12, "b": 7}}, "result": "19"}
    direct = {"task": "tool_direct", "prompt": "Sort: 3 1", "answer": "1 3", "tools": ["add"], "call": None,
              "result": None}
    assert synthetic.parse_tool_calls(call) == [item["call"]]
    assert synthetic.parse_tool_calls("<tool_call>{'name': 'add'}</tool_call>") is None
    assert synthetic.parse_tool_calls("sure " + call) is None
    assert synthetic.parse_tool_calls("1 3") == []
    replies = [(call, "19"), (call, "20"), (call.replace("12", "13"), "19"), (call + call, "19"),
               (call.replace("add", "subtract"), "19"), ("19", "19"), "1 3", call]
    scores = synthetic.grade([item] * 6 + [direct] * 2, replies)
    assert scores == {"accuracy_tool_math": 1 / 6, "accuracy_tool_direct": 0.5, "accuracy": 2 / 8}


def test_every_task_has_one_checkable_answer():
    import random

    rng = random.Random(0)
    for _ in range(200):
        p, a = synthetic.arithmetic(rng)
        work, result = a.split(": ")  # column by column, then the result
        assert result == str(eval(p[len("What is "):-1]))  # noqa: S307 (our own generated expression)
        for step in work.split(", "):  # each column's step is itself right: "7+7=14", "6-3-1=2"
            left, right = step.split("=")
            assert str(eval(left)) == right  # noqa: S307
        p, a = synthetic.reverse(rng)
        assert p.split(": ")[1][::-1] == a
        p, a = synthetic.sort(rng)
        assert sorted(p.split(": ")[1].split()) == a.split()
        p, a = synthetic.count(rng)
        _, letter, _, text = p.split(" ")
        tally, total = a.split(": ")  # the string with a running count after each letter, then the total
        assert total == str(text.count(letter)) and "".join(ch for ch in tally if ch.isalpha()) == text
        assert re.findall(rf"{letter}(\d)", tally) == [str(i) for i in range(1, text.count(letter) + 1)]
        p, a = synthetic.table(rng)
        name = p.split("Where does ")[1].split(" ")[0]
        assert a.startswith(f"{name}: ") and f"\n{a}\n" in p  # the answer is the row of the name asked


def test_letters_stay_letters_for_reversal_and_counting():
    """Names and cities are single tokens; strings to reverse or count never are."""
    tok = byte_tokenizer(synthetic.TOKEN_WORDS)
    assert tok.tokenize("name: city\nann: paris") == ["name: city", "Ċ", "ann", ": paris"]
    assert tok.tokenize("paris") == ["paris"] and tok.tokenize("Where does ann live?") == [
        "Where does", "Ġ", "ann", "Ġ", "live?"]
    assert tok.tokenize("Reverse: romex")[2:] == list("romex")  # "Reverse:" takes the colon
    assert tok.tokenize("Reverse: bannx")[2:] == list("bannx")
    assert tok.tokenize("Reverse: xadd")[2:] == list("xadd") and tok.tokenize("Count d in add") == [
        "Count", "Ġ", "d", "Ġ", "i", "n", "Ġ", "add"]  # whole words are tokens: never generated as letters
    assert not {"add", "tool", "get_city", "subtract", "user"} - synthetic._ENTITIES
    import random

    rng = random.Random(1)
    for _ in range(300):
        p, _ = synthetic.reverse(rng)
        s = p.split(": ")[1]
        assert tok.tokenize(s) == list(s)


def test_copying_drills_repeat_a_run_of_table_tokens_and_train_on_the_repeat():
    tok = byte_tokenizer(synthetic.TOKEN_WORDS)
    drills = synthetic.induction_windows(tok, 3, 257, seed=0)
    again = synthetic.induction_windows(tok, 3, 257, seed=0)
    assert len(drills) == 3 and all(
        (a == b).all() for d, e in zip(drills, again, strict=True) for a, b in zip(d, e, strict=True))
    pool = set(tok.convert_tokens_to_ids([*synthetic.NAMES, *synthetic.TABLE_CITIES]))
    for ids, mask, pos in drills:
        assert ids.shape == mask.shape == pos.shape == (257,) and set(ids.tolist()) <= pool
        starts = [i for i, p in enumerate(pos.tolist()) if p == 0]
        assert len(starts) >= 5  # runs of 4-24 tokens, twice each
        for a, b in itertools.pairwise(starts):  # every drill but the last, which the window may cut
            n = (b - a) // 2
            assert ids[a:a + n].tolist() == ids[a + n:b].tolist()  # a run, then the same run again
            # Trained on the repeat only, from its second token (its first cannot be known).
            assert mask[a:b].tolist() == [0] * (n + 1) + [1] * (n - 1)


def test_build_publishes_the_model_with_progress_and_accuracy(tmp_path):
    from trainer.tiny_chat import build

    calls = []
    out = build(tmp_path / "models" / "tiny-chat", progress=lambda *a: calls.append(a),
                overrides={"hyperparameters": {"steps": 12, "log_every": 4},
                           "tiny_chat": {"examples": 400, "eval_per_task": 2}})
    assert out == tmp_path / "models" / "tiny-chat"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-chat"]  # no .tmp, no .work left
    steps = [c[0] for c in calls]
    assert steps == sorted(steps) and calls[0][0] == 0 and calls[-1] == (14, 14, "done")
    assert any(label.startswith("training step") for _, _, label in calls)
    meta = json.loads((out / "llmsvc.json").read_text())
    assert meta["recipe"] == "tiny-chat" and meta["name"] == "tiny-chat"
    assert 0 <= meta["metrics"]["accuracy"] <= 1 and "accuracy_table" in meta["metrics"]
    assert {"accuracy_tool_math", "accuracy_tool_city", "accuracy_tool_direct"} <= set(meta["metrics"])
    assert meta["tool_parser"] == "hermes"  # the serving worker picks vLLM's tool parser by it
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 4


def test_a_quick_tools_only_build_makes_well_formed_calls(tmp_path):
    """What a serving test can build in well under a minute: every held-out tool prompt gets a Hermes call
    (one <tool_call> of JSON, the right function, the right argument names). Copying the arguments exactly
    takes longer (500 steps: 100% of the arithmetic calls; docs/benchmarks.md)."""
    from transformers import AutoTokenizer

    from trainer.model import load_model
    from trainer.recipes.tiny_chat import answer_items
    from trainer.tiny_chat import build

    out = build(tmp_path / "tiny-tools", overrides={
        "hyperparameters": {"steps": 200, "log_every": 50},
        "tiny_chat": {"tasks": ["tool_math", "tool_city"], "examples": 8000, "eval_per_task": 0,
                      "induction_steps": 0}})
    items = synthetic.held_out(20, seed=9, exclude=set(), tasks=["tool_math", "tool_city"])
    replies = answer_items(load_model(out), AutoTokenizer.from_pretrained(out), items)
    for item, (first, _) in zip(items, replies, strict=True):
        calls = synthetic.parse_tool_calls(first)
        assert calls and len(calls) == 1, (item["prompt"], first)
        assert calls[0]["name"] == item["call"]["name"], (item["prompt"], first)
        assert set(calls[0]["arguments"]) == set(item["call"]["arguments"]), (item["prompt"], first)
