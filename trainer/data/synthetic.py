"""A synthetic chat corpus every machine can make: small tasks with one right answer each.

Tasks: arithmetic (two-digit + and -), string reversal, sorting digits,
counting a letter, copying text, question answering over a small table, a
greeting that says what the model can do, and tool use: with tools offered
(``add``, ``subtract``, ``get_city``) arithmetic and "where does X live" are
answered by calling the tool, reading its result and answering with it, and the
other tasks are answered directly. Arithmetic and counting answers show their
work, one simple step a token (:func:`columns`, :func:`running_count`), then the
result. Generation is deterministic in the seed.
Held-out prompts (:func:`held_out`) never occur in the training set, so accuracy
on them measures generalisation, not memory.

Training records are OpenAI's chat fine-tuning format: ``messages`` (assistant
turns may carry ``tool_calls``; ``tool`` turns answer them) and, when tools are
offered, ``tools``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
NAMES = ("ann bob cid dan eve fay gus hal ida jon kim lea max ned oli pam ray sue tom uma vic wes yan zoe").split()
CITIES = ("paris rome oslo lima cairo delhi tokyo berlin madrid dublin quito seoul sydney vienna prague lagos "
          "accra hanoi").split()
WORDS = ("red green blue cat dog sun moon tree river stone apple bread milk tea book lamp door road ship bird fish "
         "rain snow wind fire cold warm fast slow big small happy quiet bright dark north south").split()
TOOL_NAMES = ("add", "subtract", "get_city")
_ENTITIES = set(NAMES) | set(CITIES) | set(TOOL_NAMES) | {"system", "user", "assistant", "tool"}
_CITY_PREFIXES = tuple(CITIES)
SYSTEM_HELP = ("Hello! I am tiny-chat, a very small model. I can add and subtract numbers, reverse a string, "
               "sort digits, count a letter, repeat text, tell where someone lives from a small table, "
               "and call tools.")


def columns(a: int, op: str, b: int) -> str:
    """How tiny-chat adds and subtracts (``a``, ``b`` < 100; ``a`` >= ``b`` for ``-``): column by column, as on
    paper, then the result: ``47 + 77`` → ``7+7=14, 4+7+1=12: 124`` (units, then tens with the carry) and
    ``60 - 33`` → ``10-3=7, 6-3-1=2: 27`` (units with a borrowed ten, then tens less the borrow). Each step
    needs two digits of the question and the step before it. A bare result needs the carry before its first
    digit is written: held-out 15-65% in a full build, and seed to seed from 7.5% to 97.5%; written out,
    100% after 600 steps of arithmetic alone (docs/benchmarks.md)."""
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    if op == "+":
        carry = (a0 + b0) // 10
        return f"{a0}+{b0}={a0 + b0}, {a1}+{b1}+{carry}={a1 + b1 + carry}: {a + b}"
    borrow = int(a0 < b0)
    top = a0 + 10 * borrow
    return f"{top}-{b0}={top - b0}, {a1}-{b1}-{borrow}={a1 - b1 - borrow}: {a - b}"


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", columns(a, "+", b)
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", columns(a, "-", b)


def _letters(rng: random.Random, lo: int, hi: int, alphabet: str | list[str] = LETTERS) -> str:
    """Random letters that never spell a name or city (those are single tokens; letters must stay letters)."""
    while True:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))
        # Nor begin with a city: after ": " (a table's separator) a city is one token even inside a word.
        if s not in _ENTITIES and not s.startswith(_CITY_PREFIXES):
            return s


def reverse(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, 3, 8)
    return f"Reverse: {s}", s[::-1]


def sort(rng: random.Random) -> tuple[str, str]:
    xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
    return f"Sort: {' '.join(map(str, xs))}", " ".join(map(str, sorted(xs)))


def running_count(s: str, c: str) -> str:
    """How tiny-chat counts: it copies the string, writing after each ``c`` how many it has seen so far, and
    ends with the total (``banana``, ``a`` → ``ba1na2na3: 3``). Every token it writes depends only on the
    next letter of the string and its own last number, which a model this small learns (97.5% held-out
    after 600 steps of counting alone); a bare total needs it to count in one step, which it did not
    learn (30%, docs/benchmarks.md)."""
    out, seen = [], 0
    for ch in s:
        out.append(ch)
        if ch == c:
            seen += 1
            out.append(str(seen))
    return f"{''.join(out)}: {seen}"


def count(rng: random.Random) -> tuple[str, str]:
    c = rng.choice(LETTERS)
    others = [ch for ch in LETTERS if ch != c]
    k = rng.randint(0, 4)
    while True:
        chars = list(_letters(rng, 3, 8, others))
        for _ in range(k):
            chars.insert(rng.randint(0, len(chars)), c)
        s = "".join(chars)
        if s not in _ENTITIES:
            return f"Count {c} in {s}", running_count(s, c)


def copy(rng: random.Random) -> tuple[str, str]:
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return f"Repeat: {s}", s


TABLE_SEP = ": "
"""A table row is ``name: city`` and ``": city"`` is one token, so the row's name token is followed
directly by its city, and the answer names the person first (``bob: rome``): at the answer's name token,
the city is the token after that name's earlier occurrence. That is what an induction head does (copy
what followed the last time this token occurred), and the heads form in tiny-chat's first steps on
copying drills (:func:`induction_windows`). With ``name | city`` rows and the bare city as answer, the
same model stayed at chance (a third) however long it trained (docs/benchmarks.md)."""


def table(rng: random.Random) -> tuple[str, str]:
    rows = [(n, rng.choice(CITIES)) for n in rng.sample(NAMES, 3)]
    body = "\n".join(f"{n}{TABLE_SEP}{city}" for n, city in rows)
    n, city = rng.choice(rows)
    return f"name{TABLE_SEP}city\n{body}\nWhere does {n} live?", f"{n}{TABLE_SEP}{city}"


def greet(rng: random.Random) -> tuple[str, str]:
    return rng.choice(["Hello", "Hi", "hello", "hi", "Hello!", "Hi!", "Hey", "What can you do?",
                       "Who are you?", "help"]), SYSTEM_HELP


def _params(**props: str) -> dict:
    return {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}, "required": list(props)}


TOOLS: dict[str, dict] = {
    "add": {"type": "function", "function": {"name": "add", "description": "a + b",
                                             "parameters": _params(a="integer", b="integer")}},
    "subtract": {"type": "function", "function": {"name": "subtract", "description": "a - b",
                                                  "parameters": _params(a="integer", b="integer")}},
    "get_city": {"type": "function", "function": {"name": "get_city", "description": "the city a person lives in",
                                                  "parameters": _params(name="string")}},
}
"""The functions tiny-chat learns to call, in OpenAI's ``tools`` format."""


def get_city(name: str) -> str:
    """The tool's directory: everyone, known name or not, lives in one city (a fixed hash of the name)."""
    return CITIES[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(CITIES)]


def run_tool(name: str, arguments: dict) -> str:
    """What a tool returns (the content of the ``tool`` turn)."""
    if name == "add":
        return str(arguments["a"] + arguments["b"])
    if name == "subtract":
        return str(arguments["a"] - arguments["b"])
    if name == "get_city":
        return get_city(arguments["name"])
    raise ValueError(f"unknown tool {name!r}")


def _offer(rng: random.Random, needed: list[str], pool: tuple[str, ...] = TOOL_NAMES) -> list[str]:
    """Tools offered: the needed ones plus any of the others, in random order."""
    names = needed + [t for t in pool if t not in needed and rng.random() < 0.5]
    rng.shuffle(names)
    return names


def tool_math(rng: random.Random) -> dict:
    """Arithmetic with the tools offered: call add or subtract, then answer with its result."""
    prompt, _ = arithmetic(rng)
    a, op, b = prompt[len("What is "):-1].split(" ")
    fn = "add" if op == "+" else "subtract"
    call = {"name": fn, "arguments": {"a": int(a), "b": int(b)}}
    result = run_tool(fn, call["arguments"])
    return {"prompt": prompt, "answer": result, "tools": _offer(rng, [fn]), "call": call, "result": result}


def tool_city(rng: random.Random) -> dict:
    """"Where does X live?" with get_city offered (no table in the prompt): call it, answer with its result.
    Half the names are the tables' (one token each), half made up (letters the call must copy). The tool
    answers with a city drawn per conversation, not :func:`get_city`'s fixed one: with a fixed city per
    name the model learns the answer from the name and ignores the tool's turn (it did: asked about ann
    with the tool saying lima, it answered ann's city from training), so the answer must be read there."""
    name = rng.choice(NAMES) if rng.random() < 0.5 else _letters(rng, 3, 6)
    call = {"name": "get_city", "arguments": {"name": name}}
    result = rng.choice(CITIES)
    return {"prompt": f"Where does {name} live?", "answer": result, "tools": _offer(rng, ["get_city"]),
            "call": call, "result": result}


def tool_direct(rng: random.Random) -> dict:
    """Tools offered, but none fits the question: answer directly (what ``tool_choice: auto`` must allow)."""
    task = rng.choice(["reverse", "sort", "count", "copy", "arithmetic"])
    prompt, answer = TASKS[task](rng)
    tools = ["get_city"] if task == "arithmetic" else _offer(rng, [rng.choice(TOOL_NAMES)])
    return {"prompt": prompt, "answer": answer, "tools": tools, "call": None, "result": None}


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": arithmetic, "reverse": reverse, "sort": sort, "count": count, "copy": copy, "table": table,
    "greet": greet,
}
"""Plain tasks: a prompt and its answer."""
TOOL_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "tool_math": tool_math, "tool_city": tool_city, "tool_direct": tool_direct,
}
"""Tasks with tools offered: an item with ``tools`` (names offered), ``call`` (the expected call, or None to
answer directly) and ``result`` (what the tool returns)."""
ALL_TASKS = [*TASKS, *TOOL_TASKS]
TABLE_CITIES = tuple(TABLE_SEP + c for c in CITIES)
TOKEN_WORDS = ("system", "user", "assistant", "tool", "What is", "Reverse:", "Sort:", "Count", "Repeat:",
               "name: city", "Where does", "live?", *NAMES, *CITIES, *TABLE_CITIES,
               "<tools>", "</tools>", "<tool_call>", "</tool_call>", "add(a, b)", "subtract(a, b)", "get_city(name)",
               *TOOL_NAMES, '{"name": "', '", "arguments": {', '"a": ', ', "b": ', '"name": "', '"}}', "}}")
"""Whole tokens in tiny-chat's byte tokenizer: the chat roles, the tasks' fixed words, and the names and
cities (also as the tables' ``": city"``, see :data:`TABLE_SEP`; a one-token name is what lets a model
this small learn the look-up in minutes), and
the tool format's fixed pieces (``<tool_call>`` and ``</tool_call>`` must be single tokens for vLLM's
``hermes`` parser; with the JSON punctuation as whole tokens a call is 8-11 tokens instead of about 70)."""
WEIGHTS = {"arithmetic": 4, "reverse": 1.5, "sort": 2, "count": 4, "copy": 1.5, "table": 2.5, "greet": 0.1,
           "tool_math": 1.5, "tool_city": 1.5, "tool_direct": 1.5}
"""Sampling weights: the tasks a tiny model learns last get the most examples. Moving weight from
reversal, sorting and copying (learnt early) to arithmetic, counting and look-up took held-out
arithmetic from 8% to 88% in the same 1,000 steps; the tool tasks are learnt fast and take about a fifth
of the examples. Since the drills, the look-up is learnt in about 100 steps, so half its weight went to
reversal, copying and ``tool_city``, the tasks that copy a span (docs/benchmarks.md, session 16). A
point more of the table's weight moved to copying put the look-up back near chance (docs/benchmarks.md,
session 17)."""


def induction_windows(tokenizer, count: int, width: int, seed: int) -> list:
    """``count`` windows of ``width`` tokens of copying drills: random runs of the tables' name and city
    tokens, each run repeated once, trained on the repeat. A model learns them only by forming induction
    heads (attend to the token after the last occurrence of this one, and copy it), which it does in a few
    hundred steps of drills alone, and which then make the table look-up learnable (:data:`TABLE_SEP`).
    Each drill is its own document: (tokens, loss mask, position ids) as :class:`PackedData` gives them."""
    import numpy as np

    pool = tokenizer.convert_tokens_to_ids([*NAMES, *TABLE_CITIES])
    rng = random.Random(f"{seed}-induction")
    out = []
    for _ in range(count):
        ids: list[int] = []
        mask: list[int] = []
        pos: list[int] = []
        while len(ids) < width:
            run = [rng.choice(pool) for _ in range(rng.randint(4, 24))]
            ids += run + run
            mask += [0] * (len(run) + 1) + [1] * (len(run) - 1)
            pos += range(2 * len(run))
        out.append(tuple(np.asarray(v[:width], dtype=np.int64) for v in (ids, mask, pos)))
    return out


def _item(task: str, rng: random.Random) -> dict:
    if task in TOOL_TASKS:
        return {"task": task, **TOOL_TASKS[task](rng)}
    prompt, answer = TASKS[task](rng)
    return {"task": task, "prompt": prompt, "answer": answer, "tools": None, "call": None, "result": None}


def _check(names: list[str]) -> None:
    unknown = set(names) - set(ALL_TASKS)
    if unknown:
        raise ValueError(f"unknown tiny-chat tasks {sorted(unknown)}; choose from {ALL_TASKS}")


def items(n: int, seed: int, tasks: list[str] | None = None) -> Iterator[dict]:
    """``n`` generated items: ``task``, ``prompt``, ``answer``, ``tools``, ``call``, ``result``."""
    names = tasks or list(ALL_TASKS)
    _check(names)
    rng = random.Random(seed)
    weights = [WEIGHTS[t] for t in names]
    for _ in range(n):
        yield _item(rng.choices(names, weights)[0], rng)


def examples(n: int, seed: int, tasks: list[str] | None = None) -> Iterator[tuple[str, str, str]]:
    """(task, prompt, answer) triples."""
    for it in items(n, seed, tasks):
        yield it["task"], it["prompt"], it["answer"]


def tool_specs(names: list[str] | None) -> list[dict] | None:
    return [TOOLS[t] for t in names] if names else None


def call_message(call: dict) -> dict:
    """The assistant turn that makes ``call`` (OpenAI's format: arguments as a JSON string)."""
    return {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": call["name"], "arguments": json.dumps(call["arguments"])}}]}


def record(item: dict) -> dict:
    """The training conversation of an item, in OpenAI's chat fine-tuning format."""
    messages = [{"role": "user", "content": item["prompt"]}]
    if item["call"] is not None:
        messages += [call_message(item["call"]), {"role": "tool", "tool_call_id": "call_1", "content": item["result"]}]
    messages.append({"role": "assistant", "content": item["answer"]})
    out: dict = {"messages": messages}
    if item["tools"]:
        out["tools"] = tool_specs(item["tools"])
    return out


def write_corpus(path: Path, n: int, seed: int, tasks: list[str] | None = None) -> set[str]:
    """Write ``n`` conversations as chat JSONL; return the set of prompts used (to hold others out)."""
    prompts = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for it in items(n, seed, tasks):
            prompts.add(it["prompt"])
            f.write(json.dumps(record(it)) + "\n")
    return prompts


def held_out(per_task: int, seed: int, exclude: set[str], tasks: list[str] | None = None) -> list[dict]:
    """``per_task`` items of each task (except the greeting) whose prompts are not in ``exclude``."""
    out = []
    names = tasks or list(ALL_TASKS)
    _check(names)
    for task in names:
        if task == "greet":
            continue
        rng = random.Random(f"{seed}-{task}-held-out")
        seen: set[str] = set()
        for _ in range(per_task * 200):
            if len(seen) == per_task:
                break
            it = _item(task, rng)
            if it["prompt"] in exclude or it["prompt"] in seen:
                continue
            seen.add(it["prompt"])
            out.append(it)
    return out


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> list[dict] | None:
    """The calls in a reply, as vLLM's ``hermes`` parser reads them: ``<tool_call>{"name": ..., "arguments":
    {...}}</tool_call>`` each ([] for a plain answer); None if a call is not such JSON or text other than
    calls surrounds them."""
    calls = []
    for body in _CALL.findall(text):
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not isinstance(call, dict) or set(call) != {"name", "arguments"} or not isinstance(call["arguments"], dict):
            return None
        calls.append(call)
    if calls and _CALL.sub("", text).strip():
        return None
    if not calls and "<tool_call>" in text:
        return None
    return calls


def correct(item: dict, reply: str | tuple[str, str]) -> bool:
    """A plain or direct item: the reply is the answer. A tool-call item: ``reply`` is (first reply, final
    reply); the first must be exactly the expected call, the final (after the tool's result) the answer."""
    if item.get("call") is None:
        return isinstance(reply, str) and reply.strip() == item["answer"]
    first, final = reply
    return parse_tool_calls(first) == [item["call"]] and final.strip() == item["answer"]


def grade(items: list[dict], replies: list) -> dict[str, float]:
    """Exact-match accuracy by task and overall (``accuracy``); see :func:`correct`."""
    by_task: dict[str, list[bool]] = {}
    for item, reply in zip(items, replies, strict=True):
        by_task.setdefault(item["task"], []).append(correct(item, reply))
    scores = {f"accuracy_{t}": sum(v) / len(v) for t, v in by_task.items()}
    scores["accuracy"] = sum(sum(v) for v in by_task.values()) / max(1, sum(len(v) for v in by_task.values()))
    return scores
