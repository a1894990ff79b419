"""A synthetic chat corpus every machine can make: small tasks with one right answer each.

Tasks: arithmetic (two-digit + and -), string reversal, sorting digits,
counting a letter, copying text, question answering over a small table, and a
greeting that says what the model can do. Generation is deterministic in the
seed. Held-out prompts (:func:`held_out`) never occur in the training set, so
accuracy on them measures generalisation, not memory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
NAMES = ("ann bob cid dan eve fay gus hal ida jon kim lea max ned oli pam ray sue tom uma vic wes yan zoe").split()
CITIES = ("paris rome oslo lima cairo delhi tokyo berlin madrid dublin quito seoul sydney vienna prague lagos "
          "accra hanoi").split()
WORDS = ("red green blue cat dog sun moon tree river stone apple bread milk tea book lamp door road ship bird fish "
         "rain snow wind fire cold warm fast slow big small happy quiet bright dark north south").split()
_ENTITIES = set(NAMES) | set(CITIES)
SYSTEM_HELP = ("Hello! I am tiny-chat, a very small model. I can add and subtract numbers, reverse a string, "
               "sort digits, count a letter, repeat text, and tell where someone lives from a small table.")


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", str(a - b)


def _letters(rng: random.Random, lo: int, hi: int, alphabet: str | list[str] = LETTERS) -> str:
    """Random letters that never spell a name or city (those are single tokens; letters must stay letters)."""
    while True:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))
        if s not in _ENTITIES:
            return s


def reverse(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, 3, 8)
    return f"Reverse: {s}", s[::-1]


def sort(rng: random.Random) -> tuple[str, str]:
    xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
    return f"Sort: {' '.join(map(str, xs))}", " ".join(map(str, sorted(xs)))


def count(rng: random.Random) -> tuple[str, str]:
    c = rng.choice(LETTERS)
    others = [ch for ch in LETTERS if ch != c]
    k = rng.randint(0, 4)
    while True:
        chars = list(_letters(rng, 3, 8, others))
        for _ in range(k):
            chars.insert(rng.randint(0, len(chars)), c)
        if "".join(chars) not in _ENTITIES:
            return f"Count {c} in {''.join(chars)}", str(k)


def copy(rng: random.Random) -> tuple[str, str]:
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return f"Repeat: {s}", s


def table(rng: random.Random) -> tuple[str, str]:
    rows = [(n, rng.choice(CITIES)) for n in rng.sample(NAMES, 3)]
    body = "\n".join(f"{n} | {city}" for n, city in rows)
    n, city = rng.choice(rows)
    return f"name | city\n{body}\nWhere does {n} live?", city


def greet(rng: random.Random) -> tuple[str, str]:
    return rng.choice(["Hello", "Hi", "hello", "hi", "Hello!", "Hi!", "Hey", "What can you do?",
                       "Who are you?", "help"]), SYSTEM_HELP


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": arithmetic, "reverse": reverse, "sort": sort, "count": count, "copy": copy, "table": table,
    "greet": greet,
}
TOKEN_WORDS = ("system", "user", "assistant", "What is", "Reverse:", "Sort:", "Count", "Repeat:", "name | city",
               "Where does", "live?", *NAMES, *CITIES)
"""Whole tokens in tiny-chat's byte tokenizer: the chat roles, the tasks' fixed words, and the names and
cities of the tables (a one-token name is what lets a model this small learn the look-up in minutes)."""
WEIGHTS = {"arithmetic": 4, "reverse": 1, "sort": 1, "count": 3, "copy": 1, "table": 4, "greet": 0.1}
"""Sampling weights: the tasks a tiny model learns last get the most examples. Moving weight from
reversal, sorting and copying (learnt early) to arithmetic, counting and look-up took held-out
arithmetic from 8% to 88% in the same 1,000 steps (docs/benchmarks.md)."""


def examples(n: int, seed: int, tasks: list[str] | None = None) -> Iterator[tuple[str, str, str]]:
    """(task, prompt, answer) triples."""
    names = tasks or list(TASKS)
    unknown = set(names) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tiny-chat tasks {sorted(unknown)}; choose from {list(TASKS)}")
    rng = random.Random(seed)
    weights = [WEIGHTS[t] for t in names]
    for _ in range(n):
        task = rng.choices(names, weights)[0]
        prompt, answer = TASKS[task](rng)
        yield task, prompt, answer


def write_corpus(path: Path, n: int, seed: int, tasks: list[str] | None = None) -> set[str]:
    """Write ``n`` conversations as chat JSONL; return the set of prompts used (to hold others out)."""
    prompts = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _, prompt, answer in examples(n, seed, tasks):
            prompts.add(prompt)
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return prompts


def held_out(per_task: int, seed: int, exclude: set[str], tasks: list[str] | None = None) -> list[dict]:
    """``per_task`` prompts of each task (except the greeting) that are not in ``exclude``."""
    out = []
    for task in tasks or list(TASKS):
        if task == "greet":
            continue
        rng = random.Random(f"{seed}-{task}-held-out")
        seen: set[str] = set()
        for _ in range(per_task * 200):
            if len(seen) == per_task:
                break
            prompt, answer = TASKS[task](rng)
            if prompt in exclude or prompt in seen:
                continue
            seen.add(prompt)
            out.append({"task": task, "prompt": prompt, "answer": answer})
    return out


def grade(items: list[dict], replies: list[str]) -> dict[str, float]:
    """Exact-match accuracy by task and overall (``accuracy``)."""
    by_task: dict[str, list[bool]] = {}
    for item, reply in zip(items, replies, strict=True):
        by_task.setdefault(item["task"], []).append(reply.strip() == item["answer"])
    scores = {f"accuracy_{t}": sum(v) / len(v) for t, v in by_task.items()}
    scores["accuracy"] = sum(sum(v) for v in by_task.values()) / max(1, sum(len(v) for v in by_task.values()))
    return scores
